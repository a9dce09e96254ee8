"""Label maps that open with names, colours and codes: 3D Slicer, ITK-SNAP and DICOM viewers.

``sscild segment`` writes, beside its NIfTI label map:

* ``<stem>_labels.seg.nrrd`` (:func:`write_slicer_seg`): a 3D Slicer segmentation, the label map
  (cropped to the lung's bounding box, with its offset in the scan's grid, as Slicer saves them) as
  one layer with a ``Segment<k>_*`` field per label (name, colour, label value, and a
  ``TerminologyEntry`` tag with the codes of :data:`SEGMENT_CODES`), in LPS coordinates like every
  NRRD Slicer writes. *File > Add data* opens it as a segmentation whose segments are already named,
  coloured and coded (:func:`read_slicer_terminology` reads the codes back).
* ``<stem>_labels.itksnap.txt`` (:func:`write_itksnap_labels`): an ITK-SNAP label description file
  (*Segmentation > Import Label Descriptions*) for the NIfTI label map.
* ``<stem>_seg.dcm`` (:func:`write_dicom_seg`, only when the scan was a DICOM series: a DICOM
  Segmentation must reference its source images): a DICOM Segmentation object (highdicom)
  referencing that series, one segment per label with its coded meaning (:data:`SEGMENT_CODES`),
  anatomic region and recommended display colour, and the fold models that made it
  (:func:`algorithm_parameters`), so a PACS or OHIF shows it on top of the series it came from.
  The volumes go into a DICOM SR beside it (:mod:`sscild.clinic.dicom_sr`).

Names and colours come from :mod:`sscild.palette` only (the book's figures use the same); the codes
from :data:`SEGMENT_CODES` only (the DICOM Segmentation, the DICOM SR and the .seg.nrrd share them).

Usage::

    write_slicer_seg("out/chest_labels.seg.nrrd", label, affine)
    write_itksnap_labels("out/chest_labels.itksnap.txt")
    write_dicom_seg("out/chest_seg.dcm", label, affine, series_files, models=ensemble.identity)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sscild import __version__
from sscild.errors import InputError
from sscild.palette import LABEL_NAMES, label_rgb
from sscild.paths import atomic_path

__all__ = ["SEGMENT_CODES", "LUNG", "write_slicer_seg", "read_slicer_segments", "slicer_terminology_entry",
           "read_slicer_terminology", "write_itksnap_labels", "read_itksnap_labels", "write_dicom_seg", "ras_to_lps",
           "coded", "algorithm_parameters", "derived_series_number", "read_series_headers"]

LUNG = ("39607008", "SCT", "Lung")
"""The whole organ (SNOMED CT "Lung structure"): anatomic region of the lesions, finding site in the DICOM SR."""

SEGMENT_CODES = {
    1: {"category": ("85756007", "SCT", "Tissue"), "type": ("17621005", "SCT", "Normal"),
        "anatomic_region": ("113255004", "SCT", "Structure of parenchyma of lung")},
    2: {"category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
        "type": ("112674009", "SCT", "Fibrosis"), "anatomic_region": LUNG},
    3: {"category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
        "type": ("RID28531", "RADLEX", "ground-glass opacity"), "anatomic_region": LUNG},
}
"""Coded meaning of each label, shared by the DICOM Segmentation, the DICOM SR and the .seg.nrrd:
(code value, coding scheme, code meaning) of the segmented property category, type and anatomic region.

* 1, normal lung: *normal* (SCT 17621005, category Tissue) *lung parenchyma* (anatomic region SCT
  113255004 "Structure of parenchyma of lung (body structure)"). The label is the lung tissue that is
  neither EF nor GGO, not the organ: coding it as the organ Lung (SCT 39607008), as before, claimed the
  whole lung. DICOM itself codes "normally appearing tissue on an imaging study" this way (PS3.16
  CID 7169, brain lesions, note 1: (17621005, SCT, "Normal") as the segmented property type, the organ
  given beside it), and the anatomic region keeps the concept whole in the DICOM SR too (a finding
  type plus a finding site), where a type modifier would have no place. The whole lung is labels
  1-3 together (the DICOM SR reports its volume as a group of its own).
* 2, established fibrosis: Fibrosis (SCT 112674009, a morphologic abnormality) in the Lung.
* 3, ground-glass opacity: RadLex RID28531 "ground-glass opacity" (checked against RadLex listings)
  in the Lung. No SNOMED CT morphologic abnormality for it was found (pydicom's SNOMED table and the
  DICOM context groups have none; a finding would not be a segmented property type); DICOM's own (112120, DCM, "Ground glass opacity", CID 6104, from chest
  CAD) would serve equally. RadLex is kept: it is the radiologists' lexicon, and what earlier files of
  this package carried.
"""

_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and study attributes a DICOM SEG or SR copies from its source; set empty when a series lacks them."""

_SERIES_OFFSETS = {"seg": (100, 9001), "sr": (101, 9002)}
"""Series number of a derived object: the source series' number plus the offset, or the fixed number when the
source has none. The SEG and the SR differ, and +100 keeps both clear of the scanner's own series (numbered
upwards from 1 and rarely 100 apart), so a viewer lists them after the series they belong to."""

_SLICER_CONTEXT = "Segmentation category and type - sscild SSc-ILD lung"
_SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
"""Terminology context names of the .seg.nrrd's entries: the package's own for category and type (not every
code is in a list 3D Slicer ships), Slicer's DICOM master list for the anatomic region."""

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A voxel -> RAS affine turned into voxel -> LPS (DICOM, ITK, NRRD in Slicer)."""
    return _LPS @ np.asarray(affine, dtype=float)


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be a 3D (x, y, z) array, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > max(LABEL_NAMES)):
        raise ValueError(f"label values must lie in 0..{max(LABEL_NAMES)}, got {label.min()}..{label.max()}")
    return label.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------
# 3D Slicer
# --------------------------------------------------------------------------------------------


def write_slicer_seg(path: str | Path, label: np.ndarray, affine: np.ndarray) -> Path:
    """Write a label map as a 3D Slicer segmentation (``.seg.nrrd``) with named, coloured segments.

    Args:
        path: output file (``.seg.nrrd``), written atomically.
        label: (x, y, z) integer labels, 0 background, 1..3 as :data:`sscild.palette.LABEL_NAMES`.
        affine: voxel -> RAS mm of ``label`` (the scan's own affine).

    Returns:
        ``path``.

    Usage::

        write_slicer_seg("chest_labels.seg.nrrd", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    """
    import nrrd

    label = _check_label(label)
    # crop to the segments' bounding box, as Slicer does when it saves: the offset of the box within
    # the scan's grid goes into the header, and the box's origin into "space origin"
    nz = [np.flatnonzero(label.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    lo = [int(i[0]) if i.size else 0 for i in nz]
    hi = [int(i[-1]) + 1 if i.size else n for i, n in zip(nz, label.shape)]
    box = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    lps = ras_to_lps(affine)
    lps[:3, 3] = lps[:3, :3] @ np.asarray(lo, float) + lps[:3, 3]
    header = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,  # one row per array axis
        "space origin": lps[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": " ".join(map(str, lo)),
    }
    extent = " ".join(f"0 {n - 1}" for n in box.shape)
    for i, (value, name) in enumerate(sorted(LABEL_NAMES.items())):
        r, g, b = label_rgb(value)
        header.update({
            f"Segment{i}_ID": f"Segment_{value}",
            f"Segment{i}_Name": name,
            f"Segment{i}_NameAutoGenerated": "0",
            f"Segment{i}_Color": f"{r / 255:.6f} {g / 255:.6f} {b / 255:.6f}",
            f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_LabelValue": str(value),
            f"Segment{i}_Layer": "0",
            f"Segment{i}_Extent": extent,
            f"Segment{i}_Tags": f"sscild:label={value}|TerminologyEntry:{slicer_terminology_entry(value)}|",
        })
    path = Path(path)
    with atomic_path(path, suffix=".nrrd") as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(box), header, compression_level=1)
    return path


def read_slicer_segments(path: str | Path) -> dict[int, dict]:
    """The segments a ``.seg.nrrd`` declares: ``{label value: {"name", "rgb"}}`` (for checks and tests)."""
    import nrrd

    header = nrrd.read_header(str(path))
    out = {}
    i = 0
    while f"Segment{i}_Name" in header:
        rgb = tuple(int(round(255 * float(c))) for c in str(header[f"Segment{i}_Color"]).split())
        out[int(header[f"Segment{i}_LabelValue"])] = {"name": header[f"Segment{i}_Name"], "rgb": rgb}
        i += 1
    return out


def slicer_terminology_entry(value: int) -> str:
    """The ``TerminologyEntry`` tag value of a label in a ``.seg.nrrd`` (3D Slicer's format).

    Seven parts joined by ``~``: terminology context name, category, type, type modifier, anatomic
    context name, anatomic region, anatomic region modifier; each code as ``scheme^value^meaning``, an
    absent one as ``^^``. The codes are :data:`SEGMENT_CODES`'s, as in the DICOM Segmentation.
    """
    codes = SEGMENT_CODES[int(value)]
    return "~".join([_SLICER_CONTEXT, _slicer_code(codes["category"]), _slicer_code(codes["type"]), "^^",
                     _SLICER_ANATOMIC_CONTEXT, _slicer_code(codes["anatomic_region"]), "^^"])


def _slicer_code(triple: tuple[str, str, str]) -> str:
    value, scheme, meaning = triple
    return f"{scheme}^{value}^{meaning}"


def _triple(slicer_code: str) -> tuple[str, str, str] | None:
    scheme, value, meaning = slicer_code.split("^")
    return (value, scheme, meaning) if (scheme or value or meaning) else None


def read_slicer_terminology(path: str | Path) -> dict[int, dict]:
    """The codes of each segment of a ``.seg.nrrd``, from its ``TerminologyEntry`` tag.

    Returns:
        ``{label value: {"context", "category", "type", "type_modifier", "anatomic_context",
        "anatomic_region", "anatomic_region_modifier"}}``, each code a (code value, scheme, meaning)
        triple as in :data:`SEGMENT_CODES`, or ``None`` where the entry leaves it empty; segments
        without the tag are left out.
    """
    import nrrd

    header = nrrd.read_header(str(path))
    out = {}
    i = 0
    while f"Segment{i}_LabelValue" in header:
        tags = dict(t.split(":", 1) for t in str(header.get(f"Segment{i}_Tags", "")).split("|") if ":" in t)
        if "TerminologyEntry" in tags:
            context, category, type_, modifier, anatomic_context, region, region_modifier = \
                tags["TerminologyEntry"].split("~")
            out[int(header[f"Segment{i}_LabelValue"])] = {
                "context": context, "category": _triple(category), "type": _triple(type_),
                "type_modifier": _triple(modifier), "anatomic_context": anatomic_context,
                "anatomic_region": _triple(region), "anatomic_region_modifier": _triple(region_modifier)}
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# ITK-SNAP
# --------------------------------------------------------------------------------------------

_ITKSNAP_HEADER = """################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def write_itksnap_labels(path: str | Path) -> Path:
    """Write the ITK-SNAP label description file of the study's labels (names and colours).

    Usage::

        write_itksnap_labels("chest_labels.itksnap.txt")
    """
    rows = [f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8.2f} {0:2d} {0:2d}    "Clear Label"']
    for value, name in sorted(LABEL_NAMES.items()):
        r, g, b = label_rgb(value)
        rows.append(f'{value:5d} {r:5d} {g:4d} {b:4d} {1:8.2f} {1:2d} {1:2d}    "{name}"')
    path = Path(path)
    with atomic_path(path, suffix=".txt") as tmp:
        Path(tmp).write_text(_ITKSNAP_HEADER + "\n".join(rows) + "\n")
    return path


def read_itksnap_labels(path: str | Path) -> dict[int, dict]:
    """``{label value: {"name", "rgb"}}`` from an ITK-SNAP label description file (0 excluded)."""
    import shlex

    out = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = shlex.split(line)
        value = int(parts[0])
        if value:
            out[value] = {"name": parts[7], "rgb": tuple(int(v) for v in parts[1:4])}
    return out


# --------------------------------------------------------------------------------------------
# DICOM Segmentation
# --------------------------------------------------------------------------------------------


def coded(triple: tuple[str, str, str]):
    """A (code value, scheme, meaning) triple of :data:`SEGMENT_CODES` as a highdicom ``CodedConcept``."""
    from highdicom.sr import CodedConcept

    value, scheme, meaning = triple
    return CodedConcept(value, scheme, meaning)


def read_series_headers(series_files, *, pixels: bool = False) -> list:
    """The series' datasets, in the given order, ready to be the source of a DICOM SEG or SR.

    The patient and study attributes a derived object copies (``_TYPE2_COPIED``) are set empty where the
    series lacks them (type 2: they may be empty, not absent); in memory only, the files are not touched.

    Args:
        series_files: the series' files.
        pixels: read the pixel data too (a DICOM Segmentation needs it, an SR does not).

    Returns:
        One ``pydicom.Dataset`` per file.
    """
    import pydicom

    datasets = [pydicom.dcmread(str(f), stop_before_pixels=not pixels) for f in series_files]
    for ds in datasets:
        for tag in _TYPE2_COPIED:
            if tag not in ds:
                setattr(ds, tag, "")
    return datasets


def derived_series_number(source, kind: str) -> int:
    """Series number of the DICOM SEG (``kind="seg"``) or SR (``"sr"``) made from ``source`` (a dataset of
    the CT series): its SeriesNumber + 100 (SEG) or + 101 (SR); 9001 / 9002 when it has none."""
    offset, fixed = _SERIES_OFFSETS[kind]
    number = str(source.get("SeriesNumber", "") or "").strip()
    return int(number) + offset if number.lstrip("-").isdigit() else fixed


def algorithm_parameters(models: list[dict] | None) -> dict[str, str]:
    """A compact identification of the fold models, for a DICOM algorithm identification.

    Args:
        models: one dict per model file, each with ``"sha256"`` (hex) and optionally ``"profile"``
            (as :func:`sscild.model.loading.model_identity` gives, ``Ensemble.identity``); ``None``:
            not known.

    Returns:
        ``{"models": "<n> folds", "sha256": "<first 12 hex digits of each, space-separated>",
        "profile": "<profile(s)>"}`` (``profile`` only when the models name one); ``{}`` for ``None``.
        No value holds ``,`` or ``=``: DICOM's Algorithm Parameters is one ``name=value,...`` string
        (as highdicom writes and reads it).

    Raises:
        ValueError: a model without a SHA-256 of at least 12 hex digits.
    """
    if models is None:
        return {}
    digests = [str(m.get("sha256") or "") for m in models]
    if not models or any(len(d) < 12 or any(c not in "0123456789abcdefABCDEF" for c in d) for d in digests):
        raise ValueError(f"models must each carry a hex 'sha256' (at least 12 digits), got {digests}")
    params = {"models": f"{len(models)} fold{'s' if len(models) != 1 else ''}",
              "sha256": " ".join(d[:12].lower() for d in digests)}
    profiles = sorted({str(m["profile"]) for m in models if m.get("profile")})
    if profiles:
        params["profile"] = " ".join(profiles)
    return params


def _source_datasets(series_files, affine: np.ndarray, shape) -> list:
    """The series' datasets in the label's slice order (k = 0..nz-1), checked against the affine.

    The label map's voxel (0, 0, k) must sit at slice k's ImagePositionPatient, rows along y and
    columns along x (how ITK reads a series); anything else is refused rather than written wrongly.
    """
    lps = ras_to_lps(affine)
    if len(series_files) != shape[2]:
        raise InputError(f"the DICOM series has {len(series_files)} slices but the label map {shape[2]}; "
                         "the segmentation cannot be matched to the series.")
    datasets = read_series_headers(series_files, pixels=True)
    for k, ds in enumerate(datasets):
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        expect = lps[:3, 3] + lps[:3, 2] * k
        if np.abs(ipp - expect).max() > 0.01 + 1e-3 * np.abs(expect).max():
            raise InputError(f"{series_files[k]}: slice position {ipp.round(3).tolist()} is not where the label "
                             f"map's slice {k} lies ({expect.round(3).tolist()}); the DICOM Segmentation is not written.")
        if (int(ds.Columns), int(ds.Rows)) != tuple(shape[:2]):
            raise InputError(f"{series_files[k]}: {ds.Columns}x{ds.Rows} pixels, label map slice {shape[:2]}; "
                             "the DICOM Segmentation is not written.")
    return datasets


def write_dicom_seg(path: str | Path, label: np.ndarray, affine: np.ndarray, series_files, *,
                    models: list[dict] | None = None, series_number: int | None = None) -> Path:
    """Write a DICOM Segmentation (binary, one segment per label) referencing a CT series.

    Each segment carries the codes of :data:`SEGMENT_CODES` (category, type, anatomic region) and the
    algorithm: "sscild fold ensemble", the package version, and :func:`algorithm_parameters` of ``models``.

    Args:
        path: output ``.dcm`` file, written atomically.
        label: (x, y, z) labels on the series' own grid (what :func:`sscild.data.image.load_volume` read).
        affine: voxel -> RAS of ``label``.
        series_files: the series' files in the order the volume's slices were read (z = 0..nz-1).
        models: the fold models (:func:`algorithm_parameters`); ``None``: only the version is recorded.
        series_number: the SEG's series number; ``None``: :func:`derived_series_number` (source + 100).

    Returns:
        ``path``.

    Raises:
        InputError: the series and the label map do not match slice for slice.
    """
    import highdicom as hd

    label = _check_label(label)
    sources = _source_datasets(list(series_files), affine, label.shape)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="sscild fold ensemble", version=__version__,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        parameters=algorithm_parameters(models) or None)
    descriptions = []
    for value, name in sorted(LABEL_NAMES.items()):
        codes = SEGMENT_CODES[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name,
            segmented_property_category=coded(codes["category"]), segmented_property_type=coded(codes["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[coded(codes["anatomic_region"])],
            display_color=hd.color.CIELabColor.from_rgb(*label_rgb(value))))
    # highdicom wants (frames, rows, columns) in the order of source_images; a label map whose values
    # are segment numbers is accepted as is
    frames = np.ascontiguousarray(np.transpose(label, (2, 1, 0)))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=derived_series_number(sources[0], "seg") if series_number is None else int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sscild", manufacturer_model_name="sscild segment",
        software_versions=__version__, device_serial_number="0", series_description="sscild lung lesions",
        content_label="SSCILD", content_description="normal lung, established fibrosis, ground-glass opacity")
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return path
