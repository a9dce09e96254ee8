"""The chapters' display helpers: complete tables (nothing shortened to "..."), long tables folded,
figures shown once as numbered, captioned glue:figure directives; the book's cell tags."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from sscild.book import report  # noqa: E402
from sscild.book.build import _tag_for_reading  # noqa: E402


def test_table_html_truncates_nothing():
    long = "AdamW, lr 0.001, weight decay 0.0001, warm-up then poly(0.9) decay, " * 3
    df = pd.DataFrame({"value": [long, "x"], "n": [1.23456, np.nan]}, index=["optimiser", "other"])
    with pd.option_context("display.max_colwidth", 20):       # what shortened cells before
        html = report.table_html(df)
    assert long.strip() in html and "..." not in html
    assert "1.235" in html and "—" in html                     # rounded; missing shown as a dash
    many = pd.DataFrame({"a": range(200)})
    assert report.table_html(many).count("<tr>") == 200 and "<td>199</td>" in report.table_html(many)   # every row
    with pytest.raises(ValueError, match="floatfmt"):
        report.table_html(df, floatfmt=-1)


def test_p_value_columns_never_show_zero():
    df = pd.DataFrame({"p": [1e-6, 0.0123, 0.43], "p_holm": [4e-4, 0.2, np.nan], "predicted p (Holm)": [0.0, 1.0, 0.05],
                       "rho": [1e-6, 0.5, -0.25]})
    html = report.table_html(df)
    assert html.count("&lt;0.001") == 3 and "0.012" in html and "0.43" in html   # no p rounded to 0.000
    assert html.count("0.000</td>") == 1                            # only the rho column's 1e-6, rounded as asked


def test_show_folds_long_tables(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    report.show(pd.DataFrame({"a": range(3)}), caption="short")
    assert [type(o).__name__ for o in shown] == ["HTML"]
    assert shown[0].data.startswith(f'<p class="sscild-table-caption"><strong>{report.TABLE_MARK} short</strong>')
    shown.clear()
    report.show(pd.DataFrame({"a": range(report.FOLD_ROWS + 1)}), caption="long one, profile `cpu`")
    assert len(shown) == 1 and shown[0].data.startswith("<details") and "long one" in shown[0].data
    assert "<code>cpu</code>" in shown[0].data
    shown.clear()
    report.show(pd.DataFrame({"a": range(40)}), caption="kept open", fold=False)
    assert "<details" not in shown[-1].data


def test_figure_is_glued_once_and_placed_with_label_and_caption(monkeypatch, tmp_path):
    glued, shown = [], []
    monkeypatch.setattr(report, "glue", lambda name, value, display=False: glued.append((name, value, display)))
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = report.figure(fig, "seg_dice", tmp_path, caption="Dice per patient: look at the spread.")
    assert path == tmp_path / "seg_dice.png" and path.stat().st_size > 0
    assert len(glued) == 1 and glued[0][0] == "seg_dice" and glued[0][2] is False    # not displayed by glue
    assert len(shown) == 1
    md = shown[0].data
    assert md.startswith("```{glue:figure} seg_dice\n:name: fig-seg-dice\n:alt: Dice per patient")
    assert md.rstrip().endswith("Dice per patient: look at the spread.\n```")
    with pytest.raises(ValueError, match="caption"):
        report.figure(path, "x", tmp_path, caption=" ")
    with pytest.raises(ValueError, match="identifier"):
        report.figure(path, "not-an-id", tmp_path, caption="c")


def test_parameters_cells_are_removed_from_the_page_but_kept_in_the_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('profile = "smoke"', metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("y = 2", metadata={"tags": ["remove-input"]})]
    src, dst = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    nbformat.write(nb, src)
    _tag_for_reading(src, dst)
    out = nbformat.read(dst, as_version=4)
    tags = [c.metadata.get("tags", []) for c in out.cells]
    assert "remove-cell" in tags[0] and "remove-cell" in tags[1]
    assert tags[2] == ["hide-input"] and tags[3] == ["remove-input"]
    assert [c.source for c in out.cells[:2]] == ['profile = "cpu"', 'profile = "smoke"']   # still editable


def test_the_book_numbers_tables_across_pages_in_reading_order(tmp_path, monkeypatch):
    import nbformat

    from sscild.book.build import number_tables, reading_order

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    report.show(pd.DataFrame({"a": range(3)}), caption="first")
    report.show(pd.DataFrame({"a": range(report.FOLD_ROWS + 1)}), caption="second, folded")
    report.show(pd.DataFrame({"a": range(3)}), caption="third")
    pages = []
    for name, outs in (("a", shown[:2]), ("b", shown[2:])):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("show(df)")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": o.data}) for o in outs]
        nb.cells = [nbformat.v4.new_markdown_cell("# page"), cell]
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        pages.append(tmp_path / f"{name}.ipynb")
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: b\nparts:\n  - caption: x\n    chapters:\n      - file: a\n      - file: missing\n")
    assert reading_order(toc) == ["b", "a", "missing"]
    order = [tmp_path / f"{p}.ipynb" for p in reading_order(toc)]
    assert number_tables(order) == 3
    html = {p.stem: "".join(o["data"]["text/html"] for o in nbformat.read(p, 4).cells[1].outputs) for p in pages}
    assert "Table 1.</span> third" in html["b"]                       # the root page comes first
    assert "Table 2.</span> first" in html["a"] and "Table 3.</span> second, folded" in html["a"]
    assert report.TABLE_MARK not in html["a"] + html["b"]


def test_book_buttons_link_to_a_real_repository_or_are_left_out(monkeypatch):
    from sscild.book import build

    cfg_file = build.Path(__file__).resolve().parents[1] / "book" / "_config.yml"
    off = build.book_config(cfg_file, None)
    assert "repository" not in off and off["launch_buttons"]["binderhub_url"] == ""
    assert not any(off["html"][k] for k in ("use_repository_button", "use_issues_button", "use_edit_page_button"))
    on = build.book_config(cfg_file, "https://github.com/lab/sscild")
    assert on["repository"]["url"] == "https://github.com/lab/sscild" and on["html"]["use_edit_page_button"]
    monkeypatch.setenv(build.REPO_URL_ENV, "https://gitlab.com/group/sub/sscild.git")
    assert build.repository_url() == "https://gitlab.com/group/sub/sscild"
    monkeypatch.setenv(build.REPO_URL_ENV, "")
    assert build.repository_url() is None


def test_row_labels_that_are_code_names_are_shown_in_words_but_ids_are_kept():
    html = report.table_html(pd.DataFrame({"value": [1, 2, 3]}, index=["patch_size", "case_007", "Dice EF"]))
    assert "<th>patch size</th>" in html and "<th>case_007</th>" in html and "<th>Dice EF</th>" in html
