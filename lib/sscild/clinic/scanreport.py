"""One readable page per scan and per comparison: a self-contained HTML file that opens offline.

The page holds everything a reader needs without the other files: volumes, % of lung, extent
stage, the zone table (with bars drawn in plain HTML), lung densitometry per zone, the overlay montage
embedded as a ``data:image/png;base64`` URI, the model files (with their SHA-256) and the cohort they
were trained on, and the research-use warning -- at the top of the page when that cohort was synthetic. It loads nothing from
any other file or host (no scripts, fonts or style sheets), so it can be mailed or archived as is.

Usage::

    html = scan_report_html(report, zones=table, overlay_png=png_bytes)
    Path("out/chest_report.html").write_text(html)
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from sscild.palette import LABEL_HEX
from sscild.numfmt import fmt_num

__all__ = ["scan_report_html", "comparison_report_html", "png_data_uri"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:62em;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}
.bar{display:inline-block;height:.8em;vertical-align:middle}
.warn{background:#fff4e0;border-left:4px solid #D55E00;padding:.5em 1em;margin:.6em 0}
.note{color:#555;font-size:.9em}.big{font-size:1.3em;font-weight:600}
img{max-width:100%;border:1px solid #ddd}
"""


def png_data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI (for an ``<img src>`` that needs no file)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(v) -> str:
    return html.escape(str(v))


def _num(v, nd=1) -> str:
    return fmt_num(v, nd, na="&ndash;")


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _bar(pct, colour: str, scale: float = 2.0) -> str:
    if pct is None or not math.isfinite(pct):
        return ""
    return f'<span class="bar" style="width:{max(0.0, min(pct, 100.0)) * scale:.1f}px;background:{colour}"></span>'


def _zone_table(zones: pd.DataFrame) -> str:
    rows = ["<table><tr><th>zone</th><th>lung (mL)</th><th>share of lung</th><th>EF % of zone</th>"
            "<th>GGO % of zone</th><th>lesion % of zone</th><th></th></tr>"]
    for zone, r in zones.iterrows():
        rows.append(
            f"<tr><td>{_e(zone)}</td><td>{_num(r['lung_ml'])}</td><td>{_num(r['share_of_lung_pct'])} %</td>"
            f"<td>{_num(r['ef_pct'])}</td><td>{_num(r['ggo_pct'])}</td><td>{_num(r['lesion_pct'])}</td>"
            f"<td style='text-align:left'>{_bar(r['ef_pct'], LABEL_HEX[2])}{_bar(r['ggo_pct'], LABEL_HEX[3])}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _density_table(report: dict) -> list[str]:
    """Densitometry per zone (:mod:`sscild.clinic.densitometry`), when the report has it."""
    dens = report.get("densitometry")
    if not dens:
        return []
    cols = (("mean_hu", "mean (HU)", 0), ("sd_hu", "SD (HU)", 0), ("skewness", "skewness", 2),
            ("kurtosis", "kurtosis", 2), ("haa_pct", "HAA (%)", 1), ("laa950_pct", "below -950 HU (%)", 1),
            ("pd15_hu", "15th percentile (HU)", 0))
    out = ["<h2>Lung densitometry</h2><table><tr><th>zone</th>" + "".join(f"<th>{_e(h)}</th>" for _, h, _ in cols)
           + "</tr>"]
    for zone, row in dens["table"].items():
        out.append(f"<tr><td>{_e(zone)}</td>" + "".join(f"<td>{_num(row.get(k), nd)}</td>" for k, _, nd in cols)
                   + "</tr>")
    rules, heads = dens.get("rules", {}), {k: h for k, h, _ in cols}
    out.append("</table><p class='note'>" + "<br>".join(_e(f"{heads.get(k, k)}: {v}") for k, v in rules.items())
               + "</p>")
    return out


def _model_rows(report: dict) -> list[tuple[str, str]]:
    """(label, text) rows naming each model file with its hash and the training cohort."""
    rows = []
    cohort = report.get("training_cohort") or {}
    if cohort:
        kind = {True: "synthetic", False: "real scans", None: "not recorded whether real or synthetic"}[cohort.get("synthetic")]
        rows.append(("training cohort", f"{cohort.get('name') or 'not recorded'} ({kind})"))
    for m in report.get("model_files", []):
        rows.append((f"model, fold {m.get('fold')}", f"{m['path']} (SHA-256 {m['sha256'][:16]}...)"))
    return rows


def _quality_section(report: dict) -> list[str]:
    """Quality-control flags (each: what was seen, what it means) and the uncertainty per class."""
    qc = report.get("quality_control")
    out = []
    if qc is not None:
        out.append("<h2>Can this result be trusted?</h2>")
        if qc["flags"]:
            for f in qc["flags"]:
                out.append(f"<div class='warn'><b>{_e(f['code'].replace('_', ' '))}</b>: {_e(f['seen'])} "
                           f"{_e(f['means'])} <span class='note'>(affects: {_e(', '.join(f['affects']))})</span></div>")
        else:
            out.append("<p>No quality-control flag: the lung is plausible in size, the threshold rule finds no "
                       "air-filled lung the network left out, head and feet are where the header says, the lung is "
                       "not cut off at either end, no contrast medium, slices not too thick, uncertainty low.</p>")
    unc = report.get("uncertainty")
    if unc is not None:
        names = {"normal": "normal lung", "ef": "EF", "ggo": "GGO", "lesion": "lesion (EF + GGO)", "lung": "whole lung"}
        out.append("<table><tr><th>called</th><th>voxels</th><th>mean uncertainty (%)</th><th>uncertain (%)</th></tr>")
        for k in ("normal", "ef", "ggo", "lesion", "lung"):
            r = unc["per_class"].get(k)
            if r:
                out.append(f"<tr><td>{_e(names[k])}</td><td>{r['voxels']}</td><td>{_num(r['mean_uncertainty_pct'])}</td>"
                           f"<td>{_num(r['uncertain_pct'])}</td></tr>")
        out.append(f"</table><p class='note'>Uncertainty: {_e(unc['rule'])}. Map: {_e(unc['map'])}.</p>")
    return out


def scan_report_html(report: dict, *, zones: pd.DataFrame | None = None, overlay_png: bytes | None = None) -> str:
    """The HTML page of one ``sscild segment`` result.

    Args:
        report: the report dict :func:`sscild.clinic.segment.segment_scan` writes as JSON.
        zones: :func:`sscild.clinic.zones.zone_extent` table (optional).
        overlay_png: the montage PNG bytes, embedded (optional).

    Returns:
        The page as a string.
    """
    s = report["summary"]
    pct, vol = s["percent_of_lung"], s["volumes_ml"]
    acq = report.get("acquisition", {})
    name = s["scan"].rstrip("/").split("/")[-1]
    body = [f"<h1>Lung lesion report: {_e(name)}</h1>"]
    if (report.get("training_cohort") or {}).get("synthetic"):
        body.append(f"<div class='warn'><b>Synthetic-only models.</b> {_e(report.get('warning', ''))}</div>")
    body += [
            f"<p class='big'>Lesion (EF + GGO) {_num(pct.get('lesion'))} % of lung &mdash; extent "
            f"<b>{_e(s['extent_stage'])}</b></p>",
            f"<p class='note'>{_e(s['extent_rule'])}. Scan: {_e(s['scan'])}</p>",
            *_quality_section(report),
            "<h2>Volumes</h2><table><tr><th>region</th><th>volume (mL)</th><th>% of lung</th></tr>"]
    names = {"normal": "normal lung", "ef": "established fibrosis (EF)", "ggo": "ground-glass opacity (GGO)",
             "lesion": "lesion (EF + GGO)", "lung": "whole lung"}
    for k in ("normal", "ef", "ggo", "lesion", "lung"):
        if k in vol:
            body.append(f"<tr><td>{_e(names[k])}</td><td>{_num(vol[k])}</td>"
                        f"<td>{'' if k == 'lung' else _num(pct.get(k), 2)}</td></tr>")
    body.append("</table>")
    if zones is not None:
        body.append("<h2>Where the disease is</h2>")
        body.append(_zone_table(zones))
        rules = report.get("zones", {}).get("rules", {})
        body.append("<p class='note'>" + "<br>".join(_e(v) for v in rules.values()) +
                    f"<br>Bars: <span style='color:{LABEL_HEX[2]}'>EF</span> and "
                    f"<span style='color:#9a8f00'>GGO</span>, % of the zone's lung (2 px per %).</p>")
    body += _density_table(report)
    if overlay_png:
        body.append("<h2>Overlay</h2>")
        body.append(f"<img alt='axial and coronal slices with the segmentation' src='{png_data_uri(overlay_png)}'>")
    body.append("<h2>How this was computed</h2><table>")
    for label, value in (("acquisition", ", ".join(f"{k}: {v}" for k, v in acq.items() if v not in (None, ""))),
                         ("input grid", f"{report['input_shape']} voxels of {[round(x, 3) for x in report['input_spacing_mm']]} mm"),
                         ("models", report.get("models_choice") or f"{len(report['models'])} model(s)"),
                         ("ensemble", report.get("ensemble")), ("post-processing", report.get("postprocess")),
                         ("precision", report.get("precision")), *_model_rows(report)):
        body.append(f"<tr><td>{_e(label)}</td><td style='text-align:left'>{_e(value)}</td></tr>")
    body.append("</table>")
    for what, why in report.get("not_written", {}).items():
        body.append(f"<p class='note'>Not written: {_e(what)}: {_e(why)}.</p>")
    body.append(f"<div class='warn'>{_e(report.get('warning', ''))}</div>")
    return _page(f"sscild report: {name}", body)


def comparison_report_html(result: dict, *, overlays: tuple[bytes | None, bytes | None] = (None, None)) -> str:
    """The HTML page of one ``sscild compare`` result (:func:`sscild.clinic.compare.compare_scans`).

    Args:
        result: the comparison dict (``change`` table records, ``warnings``, ``mcid``, scans).
        overlays: the baseline and follow-up montages (PNG bytes), embedded when given.
    """
    body = [f"<h1>Change of lung lesions: {_e(result['baseline']['name'])} &rarr; {_e(result['followup']['name'])}</h1>"]
    if result["warnings"]:
        body.append("<h2>Are the scans comparable?</h2>")
        body += [f"<div class='warn'>{_e(w)}</div>" for w in result["warnings"]]
    else:
        body.append("<p>No comparability problem found among what could be checked (see below).</p>")
    if result.get("not_checked"):
        body.append("<p class='note'>Not checked: " + "; ".join(_e(u) for u in result["not_checked"]) + ".</p>")
    body.append("<h2>Change per class and zone</h2>")
    body.append("<table><tr><th>zone</th><th>class</th><th>baseline % of zone</th><th>follow-up %</th>"
                "<th>change (pp)</th><th>change (mL)</th><th>beyond MCID?</th></tr>")
    for r in result["change"]:
        body.append(f"<tr><td>{_e(r['zone'])}</td><td>{_e(r['class'])}</td><td>{_num(r['baseline_pct'], 2)}</td>"
                    f"<td>{_num(r['followup_pct'], 2)}</td><td>{_num(r['change_pp'], 2)}</td>"
                    f"<td>{_num(r['change_ml'], 1)}</td><td>{_e(r.get('mcid', ''))}</td></tr>")
    body.append("</table>")
    body.append(f"<p class='note'>{_e(result['mcid']['statement'])}</p>")
    body.append("<h2>The two scans</h2><table><tr><th></th><th>baseline</th><th>follow-up</th></tr>")
    for key in ("patient_id", "study_date", "slice_thickness_mm", "kernel", "lung_volume_ml", "lesion_pct", "stage"):
        a, b = (result[r].get(key) for r in ("baseline", "followup"))
        body.append(f"<tr><td>{_e(key)}</td><td>{_e('unknown' if a is None else a)}</td>"
                    f"<td>{_e('unknown' if b is None else b)}</td></tr>")
    body.append("</table>")
    for title, png in zip(("Baseline", "Follow-up"), overlays):
        if png:
            body.append(f"<h2>{title}</h2><img alt='{title} overlay' src='{png_data_uri(png)}'>")
    body.append("<div class='warn'>Research software, not a medical device. A change is only as reliable as the "
                "two segmentations; check both overlays.</div>")
    return _page("sscild comparison", body)
