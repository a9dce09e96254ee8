"""The one clinical-table parser (sscild.data.clinical_table): each rule decided once and used by every
reader, and each kind of clinical gap mapped to the exit status of `sscild validate`."""

from __future__ import annotations

import csv
import math

import pandas as pd
import pytest

from cohort_factory import make_tiny_cohort
from sscild.cli import main
from sscild.data.clinical_table import (CLINICAL_GAPS, EXIT_CLINICAL_ROWS, EXIT_CLINICAL_VALUES, parse_clinical,
                                        read_cells)
from sscild.data.validation_report import PROBLEM_KINDS

CASES = ["c1", "c2", "c3"]


def table(tmp_path, text: str, cases=CASES):
    path = tmp_path / "clinical.csv"
    path.write_text(text)
    return parse_clinical(path, cases)


def kinds(t):
    return sorted(p.kind for p in t.problems)


def test_missing_tokens_are_blank_not_gaps(tmp_path):
    t = table(tmp_path, "case_id,fvc_pct\nc1,NA\nc2, n/a \nc3,-\n")
    assert t.frame["fvc_pct"].isna().all()
    assert kinds(t) == ["clinical_missing_value"] * 3 and t.gaps == [] and t.exit_code() == 0


def test_sex_vocabulary(tmp_path):
    t = table(tmp_path, "case_id,Sex\nc1,female\nc2,M\nc3,x\n")
    assert t.frame["Sex"].tolist()[:2] == ["F", "M"] and t.frame["Sex"].isna().tolist()[2]
    assert kinds(t) == ["clinical_non_numeric"] and t.exit_code() == EXIT_CLINICAL_VALUES


def test_fev1_fvc_is_a_ratio_and_percent_is_set_aside_not_divided(tmp_path):
    t = table(tmp_path, "case_id,fev1_fvc\nc1,0.81\nc2,75\nc3,1.1\n")
    assert t.frame["fev1_fvc"].tolist()[0] == 0.81 and math.isnan(t.frame["fev1_fvc"].tolist()[1])
    assert t.frame["fev1_fvc"].tolist()[2] == 1.1
    (gap,) = t.gaps
    assert gap.kind == "clinical_implausible" and gap.case_id == "c2" and "ratio" in gap.fix


@pytest.mark.parametrize("column,value,ok", [("fvc_pct", "9", False), ("fvc_pct", "200", True),
                                             ("kco_pct", "250", False), ("kco_pct", "90", True),
                                             ("lung_volume_ml", "-5", False), ("lung_volume_ml", "4000", True),
                                             ("age", "3", False)])
def test_plausible_ranges(tmp_path, column, value, ok):
    t = table(tmp_path, f"case_id,{column}\nc1,{value}\nc2,50\nc3,60\n")
    assert (t.gaps == []) is ok
    assert math.isnan(t.frame[column]["c1"]) is (not ok)


def test_row_rules(tmp_path):
    t = table(tmp_path, "case_id,fvc_pct\nc1,80\nc1,82\n,70\nzz,60\nc2,90\n")
    assert kinds(t) == ["clinical_duplicate_row", "clinical_missing_row", "clinical_no_case_id",
                        "clinical_without_image"]
    assert math.isnan(t.frame["fvc_pct"]["c1"])            # several rows: none is used
    assert t.frame["fvc_pct"]["c2"] == 90
    assert t.exit_code() == EXIT_CLINICAL_ROWS
    aside = t.set_aside()
    assert set(aside["case_id"]) == {"c1", "c3", "zz", "(table)"}


def test_without_case_ids_the_table_gives_its_own(tmp_path):
    t = table(tmp_path, "case_id,fvc_pct\nc1,80\nc2,x\n", cases=None)
    assert list(t.frame.index) == ["c1", "c2"] and kinds(t) == ["clinical_non_numeric"]


def test_every_gap_kind_is_a_known_problem_kind():
    assert set(CLINICAL_GAPS) <= set(PROBLEM_KINDS)
    assert "clinical_missing_value" not in CLINICAL_GAPS


def test_read_cells_keeps_text_and_refuses_non_csv(tmp_path):
    (tmp_path / "t.csv").write_text(" case_id ,fev1_fvc\nc1,75\n")
    cells = read_cells(tmp_path / "t.csv")
    assert list(cells.columns) == ["case_id", "fev1_fvc"] and cells["fev1_fvc"].tolist() == ["75"]
    (tmp_path / "bad.csv").write_bytes(b'"unclosed\n')
    with pytest.raises(ValueError, match="cannot be read as CSV"):
        read_cells(tmp_path / "bad.csv")


def _rewrite(root, edit):
    rows = list(csv.DictReader((root / "clinical.csv").open()))
    rows = edit(rows)
    with open(root / "clinical.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case_id"])
        w.writeheader()
        w.writerows(rows)


def _set(field, value, case=0):
    def edit(rows):
        rows[case][field] = value
        return rows
    return edit


# kind -> (how to make it, exit status of `sscild validate`)
CASES_BY_KIND = {
    "none": (lambda rows: rows, 0),
    "clinical_missing_value": (_set("fvc_pct", ""), 0),
    "clinical_non_numeric": (_set("fvc_pct", "high"), EXIT_CLINICAL_VALUES),
    "clinical_implausible": (_set("fev1_fvc", "75"), EXIT_CLINICAL_VALUES),
    "clinical_duplicate_row": (lambda rows: rows + [dict(rows[0])], EXIT_CLINICAL_ROWS),
    "clinical_without_image": (lambda rows: rows + [dict(rows[0], case_id="nobody")], EXIT_CLINICAL_ROWS),
    "clinical_no_case_id": (lambda rows: rows + [dict(rows[0], case_id="")], EXIT_CLINICAL_ROWS),
    "clinical_missing_row": (lambda rows: rows[1:], EXIT_CLINICAL_ROWS),
}


@pytest.mark.parametrize("kind", sorted(CASES_BY_KIND))
def test_each_problem_kind_gives_its_exit_status(tmp_path, kind, capsys):
    root = make_tiny_cohort(tmp_path / "c", n=3)
    edit, status = CASES_BY_KIND[kind]
    _rewrite(root, edit)
    assert main(["validate", str(root)]) == status
    out = capsys.readouterr()
    if kind != "none":
        assert kind in out.out
    if status:
        assert "--allow-clinical-gaps" in out.err
        assert main(["validate", str(root), "--allow-clinical-gaps"]) == 0     # the documented opt-in


def test_missing_table_is_a_row_gap_and_image_errors_come_first(tmp_path):
    root = make_tiny_cohort(tmp_path / "c", n=3)
    (root / "clinical.csv").unlink()
    assert main(["validate", str(root)]) == EXIT_CLINICAL_ROWS
    (root / "labelsTr" / "case_000.nii.gz").unlink()                 # an unusable case: exit 1 wins
    assert main(["validate", str(root)]) == 1
    assert main(["validate", str(root), "--exclude-bad", "--allow-clinical-gaps"]) == 0


def test_the_validator_and_the_parser_agree(tmp_path):
    from sscild.data.validate import validate_cohort

    root = make_tiny_cohort(tmp_path / "c", n=3)
    _rewrite(root, _set("fev1_fvc", "75"))
    report = validate_cohort(root)
    parsed = parse_clinical(root / "clinical.csv", report.cases)
    clinical = [p for p in report.problems if p.kind.startswith("clinical")]
    assert [(p.case_id, p.kind) for p in clinical] == [(p.case_id, p.kind) for p in parsed.problems]
    assert isinstance(parsed.frame, pd.DataFrame)
