"""Label maps that open with names and colours: 3D Slicer, ITK-SNAP and DICOM viewers.

``sscild segment`` writes, beside its NIfTI label map:

* ``<stem>_labels.seg.nrrd`` (:func:`write_slicer_seg`): a 3D Slicer segmentation, the label map
  (cropped to the lung's bounding box, with its offset in the scan's grid, as Slicer saves them) as
  one layer with a ``Segment<k>_*`` field per label (name, colour, label value), in LPS
  coordinates like every NRRD Slicer writes. *File > Add data* opens it as a segmentation whose
  segments are already named and coloured.
* ``<stem>_labels.itksnap.txt`` (:func:`write_itksnap_labels`): an ITK-SNAP label description file
  (*Segmentation > Import Label Descriptions*) for the NIfTI label map.
* ``<stem>_seg.dcm`` (:func:`write_dicom_seg`, only when the scan was a DICOM series): a DICOM
  Segmentation object (highdicom) referencing that series, one segment per label with its coded
  meaning and recommended display colour, so a PACS or OHIF shows it on top of the series it came from.

Names and colours come from :mod:`sscild.palette` only (the book's figures use the same).

Usage::

    write_slicer_seg("out/chest_labels.seg.nrrd", label, affine)
    write_itksnap_labels("out/chest_labels.itksnap.txt")
    write_dicom_seg("out/chest_seg.dcm", label, "scans/chest_dicom/")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sscild import __version__
from sscild.errors import InputError
from sscild.palette import LABEL_NAMES, label_rgb
from sscild.paths import atomic_path

__all__ = ["SEGMENT_CODES", "write_slicer_seg", "read_slicer_segments", "write_itksnap_labels",
           "read_itksnap_labels", "write_dicom_seg", "ras_to_lps"]

SEGMENT_CODES = {
    1: {"category": ("91723000", "SCT", "Anatomical Structure"), "type": ("39607008", "SCT", "Lung")},
    2: {"category": ("49755003", "SCT", "Morphologically Abnormal Structure"), "type": ("112674009", "SCT", "Fibrosis")},
    3: {"category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
        "type": ("RID28531", "RADLEX", "ground-glass opacity")},
}
"""Coded meaning of each label in the DICOM Segmentation: (code value, scheme, meaning) of the
segmented property category and type (SNOMED CT; RadLex for ground-glass opacity, which SNOMED
codes only as a finding)."""

_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and study attributes a DICOM Segmentation copies from its source; set empty when a series lacks them."""

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
            f"Segment{i}_Tags": f"sscild:label={value}|",
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


def _code(triple):
    from pydicom.sr.coding import Code

    value, scheme, meaning = triple
    return Code(value, scheme, meaning)


def _source_datasets(series_files, affine: np.ndarray, shape) -> list:
    """The series' datasets in the label's slice order (k = 0..nz-1), checked against the affine.

    The label map's voxel (0, 0, k) must sit at slice k's ImagePositionPatient, rows along y and
    columns along x (how ITK reads a series); anything else is refused rather than written wrongly.
    """
    import pydicom

    lps = ras_to_lps(affine)
    if len(series_files) != shape[2]:
        raise InputError(f"the DICOM series has {len(series_files)} slices but the label map {shape[2]}; "
                         "the segmentation cannot be matched to the series.")
    datasets = [pydicom.dcmread(str(f)) for f in series_files]
    for ds in datasets:  # in memory only: the DICOM Segmentation copies these (type 2: may be empty, not absent)
        for tag in _TYPE2_COPIED:
            if tag not in ds:
                setattr(ds, tag, "")
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


def write_dicom_seg(path: str | Path, label: np.ndarray, affine: np.ndarray, series_files) -> Path:
    """Write a DICOM Segmentation (binary, one segment per label) referencing a CT series.

    Args:
        path: output ``.dcm`` file, written atomically.
        label: (x, y, z) labels on the series' own grid (what :func:`sscild.data.image.load_volume` read).
        affine: voxel -> RAS of ``label``.
        series_files: the series' files in the order the volume's slices were read (z = 0..nz-1).

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
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    descriptions = []
    for value, name in sorted(LABEL_NAMES.items()):
        codes = SEGMENT_CODES[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name,
            segmented_property_category=_code(codes["category"]), segmented_property_type=_code(codes["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label_rgb(value))))
    # highdicom wants (frames, rows, columns) in the order of source_images; a label map whose values
    # are segment numbers is accepted as is
    frames = np.ascontiguousarray(np.transpose(label, (2, 1, 0)))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sscild", manufacturer_model_name="sscild segment",
        software_versions=__version__, device_serial_number="0", series_description="sscild lung lesions",
        content_label="SSCILD", content_description="normal lung, established fibrosis, ground-glass opacity")
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return path
