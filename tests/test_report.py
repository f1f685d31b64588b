"""The HTML run report: plots from hand-built inputs, the plotted values of a real run
against its run_summary.json, and the real report in Chromium.

The browser test needs Chromium (``chromium`` on PATH, or ``CHROMIUM=/path``). Without
it the test fails, naming the package to install; set ``REPORT_BROWSER_TEST=skip`` to
skip it explicitly instead (for machines that cannot install a browser).
"""
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from evaluation import report
from evaluation.report import plots

PLOT_IDS = ("plot-recall", "plot-popularity", "plot-compression", "plot-loss", "plot-timings")


def _metrics(recall10, recall50, coverage10):
    # Monotone in K, as recall and coverage are: 10 < 20 < 50 < 100.
    return {"recall@10": recall10, "recall@20": (recall10 + recall50) / 2,
            "recall@50": recall50, "recall@100": min(1.0, recall50 * 1.4),
            "ndcg@10": recall10 * 1.2, "coverage@10": coverage10,
            "coverage@20": coverage10 * 1.3, "coverage@50": coverage10 * 1.8,
            "coverage@100": min(1.0, coverage10 * 2.5), "users": 400}


def _inputs(compression):
    rng = np.random.default_rng(0)
    return report.ReportInputs(
        pipeline_root="/tmp/root",
        evaluation={"ks": [10, 20, 50, 100], "gate_k": 50, "eval_users": 400,
                    "catalog_size": 800,
                    "metrics": {"model": _metrics(0.12, 0.36, 0.4),
                                "popularity": _metrics(0.06, 0.2, 0.02),
                                "served": None}},
        history={"loss": [5.0, 4.2, 3.9], "val_loss": [5.1, 4.6, 4.5],
                 "examples_per_second": 7000.0},
        compression=compression,
        component_seconds={"prepare": 0.4, "FileBasedExampleGen": 17.3, "Transform": 49.4,
                           "Trainer": 89.4},
        component_peak_mb={"Transform": 2400.0},
        bias=report.PopularityBias(rng.zipf(1.8, 800), rng.zipf(1.3, 4000), 400, 10, 312))


OLD_COMPRESSION = {"method": "magnitude-pruning+int8-per-row", "gate_k": 50,
                   "max_recall_drop": 0.02, "original_bytes": 1_232_597,
                   "compressed_bytes": 390_083, "recall@50_original": 0.3691,
                   "recall@50_compressed": 0.3710}
TRIED_COMPRESSION = {**OLD_COMPRESSION, "tried": [
    {"method": "original", "size_bytes": 1_232_597, "recall@50": 0.3691},
    {"method": "magnitude-pruning+int8-per-row", "size_bytes": 390_083, "recall@50": 0.3710,
     "chosen": True},
    {"method": "distilled-student(1/2)+magnitude-pruning+int8-per-row", "size_bytes": 250_000,
     "recall@50": 0.3650}]}


def _embedded_pngs(page):
    return {m.group(1): Image.open(io.BytesIO(base64.b64decode(m.group(2))))
            for m in re.finditer(r'<img id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"',
                                 page)}


def test_compression_points_use_tried_when_present():
    points, k = report.compression_points(TRIED_COMPRESSION)
    assert k == 50
    assert [p["method"] for p in points] == [t["method"] for t in TRIED_COMPRESSION["tried"]]
    assert [p["chosen"] for p in points] == [False, True, False]


def test_compression_points_fall_back_to_original_and_compressed():
    points, _ = report.compression_points(OLD_COMPRESSION)
    assert [(p["method"], p["size_bytes"], p["recall"]) for p in points] == [
        ("original", 1_232_597, 0.3691),
        ("magnitude-pruning+int8-per-row", 390_083, 0.3710)]
    # A compressor that skipped (model not blessed) has nothing to plot.
    assert report.compression_points({"blessed": False, "reason": "x"}) == ([], 50)


@pytest.mark.parametrize("compression", [OLD_COMPRESSION, TRIED_COMPRESSION])
def test_report_embeds_every_plot_as_a_png(compression):
    page = report.render_html(_inputs(compression))
    images = _embedded_pngs(page)
    assert set(images) == set(PLOT_IDS)
    for name, image in images.items():
        assert image.width > 300 and image.height > 150, name
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 50, f"{name} looks blank: {len(colours)} colours"
    assert "http://" not in page and "https://" not in page  # self-contained


def test_missing_parts_are_noted_not_fatal():
    inputs = _inputs(None)
    inputs.history, inputs.bias, inputs.component_seconds = None, None, {}
    page = report.render_html(inputs)
    assert set(_embedded_pngs(page)) == {"plot-recall"}
    assert page.count("no data in this run") == 4


def _drawn_recall(page):
    """``data-points`` of the recall plot: what its lines were drawn through."""
    m = re.search(r'<img id="plot-recall"[^>]*data-points="([^"]*)"', page)
    assert m, "the recall plot carries no data-points"
    return json.loads(html.unescape(m.group(1)))


def _point_at(points, k):
    [y] = [y for x, y in points if x == k]
    return y


def test_recall_plot_draws_each_methods_recall_at_each_k():
    inputs = _inputs(None)
    fig = plots.recall_figure(inputs)
    drawn = plots.drawn_points(fig)
    # served is None in metrics.json: no line. The model's recall@50 is 0.36, popularity's
    # 0.2 (see _inputs); coverage@10 is 0.4 and 0.02.
    assert set(drawn["recall@K"]) == {"model", "popularity"}
    assert _point_at(drawn["recall@K"]["model"], 50) == 0.36
    assert _point_at(drawn["recall@K"]["popularity"], 50) == 0.2
    assert _point_at(drawn["coverage@K"]["model"], 10) == 0.4

    # The pixel at (K=50, 0.36) in the rendered image is the model's blue, and the pixel
    # where a wrong value (0.30) would sit is not: the image shows the number too.
    fig.canvas.draw()
    ax = fig.axes[0]
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)

    def colour_at(y):
        px, py = ax.transData.transform((50, y))
        return rgb[int(round(rgb.shape[0] - py)), int(round(px))]
    model_blue = [31, 119, 180]
    assert np.abs(colour_at(0.36) - model_blue).sum() < 40, colour_at(0.36)
    assert np.abs(colour_at(0.30) - model_blue).sum() > 100, colour_at(0.30)


def test_report_embeds_the_drawn_recall_points():
    inputs = _inputs(TRIED_COMPRESSION)
    drawn = _drawn_recall(report.render_html(inputs))
    assert drawn == plots.drawn_points(plots.recall_figure(inputs))
    for k in inputs.evaluation["ks"]:
        for method in ("model", "popularity"):
            assert _point_at(drawn["recall@K"][method], k) == \
                inputs.evaluation["metrics"][method][f"recall@{k}"], (method, k)


def test_the_report_never_imports_the_layers_above_it():
    # The runner imports the report; a report importing the runner, the pipeline or a
    # component (even inside a function) would be a cycle or a layering breach.
    import ast
    package = os.path.dirname(report.__file__)
    above = ("runner", "pipeline", "components")
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(package, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for module in modules:
                assert module.split(".")[0] not in above, f"{name} imports {module}"


# ------------------------------------------------------------------ browser

def _chromium():
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("REPORT_BROWSER_TEST") == "skip":
        pytest.skip("REPORT_BROWSER_TEST=skip and no Chromium installed")
    pytest.fail("Chromium is needed to check that report.html renders: install the Debian "
                "package 'chromium' (apt-get install -y chromium), point CHROMIUM at a "
                "binary, or set REPORT_BROWSER_TEST=skip to skip this test explicitly")


def _headless(chromium, profile, *args, timeout=120):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


# Written into a copy of the report: after load, lists every image's decoded size.
_PROBE = """<script>window.addEventListener('load', function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    out.push([im.id, im.complete, im.naturalWidth, im.naturalHeight]);
  }
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.e2e
def test_report_of_a_real_run_renders_in_chromium(small_pipeline, tmp_path):
    root, summary, _ = small_pipeline
    path = os.path.join(root, report.REPORT_FILE)
    assert summary["report"] == path and os.path.isfile(path), summary.get("report")
    chromium = _chromium()
    with open(summary["first_report"], encoding="utf-8") as f:  # whatever ran since
        page = f.read()
    # Every plot of a full run is there (compression too: the small run is blessed).
    assert set(_embedded_pngs(page)) == set(PLOT_IDS)

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _headless(chromium, tmp_path / "profile1", "--virtual-time-budget=10000",
                    "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"Chromium did not run the probe: {dom.stderr[-2000:]}"
    decoded = {name: (complete, w, h) for name, complete, w, h in json.loads(m.group(1))}
    assert set(decoded) == set(PLOT_IDS)
    for name, (complete, width, height) in decoded.items():
        assert complete and width > 300 and height > 150, (name, complete, width, height)

    shot = tmp_path / "report.png"
    result = _headless(chromium, tmp_path / "profile2", f"--screenshot={shot}",
                       "--window-size=1100,3000", "--hide-scrollbars",
                       "--virtual-time-budget=10000", f"file://{summary['first_report']}")
    assert shot.is_file(), f"no screenshot: {result.stderr[-2000:]}"
    image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    colours = len(np.unique(pixels[:, 0] * 65536 + pixels[:, 1] * 256 + pixels[:, 2]))
    # The model's plot colour (matplotlib's C0, #1f77b4) drawn in lines, bars and bins.
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=1) < 40).sum()
    non_white = (pixels.sum(axis=1) < 720).mean()
    assert colours > 500, f"screenshot has only {colours} colours: plots did not render"
    assert blue > 5000, f"only {blue} pixels of the model colour: plots did not render"
    assert non_white > 0.03, f"screenshot is {100 * (1 - non_white):.1f}% white"


@pytest.mark.e2e
def test_first_report_plots_the_recall_of_run_summary(small_pipeline):
    # The first run's report and the run summary that run wrote (both kept by the fixture,
    # so later reruns in the same root do not matter).
    _, summary, _ = small_pipeline
    written = summary["run_summary"]
    k = written["gate"]["k"]
    with open(summary["first_report"], encoding="utf-8") as f:
        drawn = _drawn_recall(f.read())["recall@K"]
    assert _point_at(drawn["model"], k) == written["evaluation"][f"recall@{k}"]
    assert _point_at(drawn["model"], 10) == written["evaluation"]["recall@10"]
    assert _point_at(drawn["popularity"], k) == written["baseline"]["popularity"][f"recall@{k}"]


@pytest.mark.e2e
def test_report_cli_rebuilds_the_report_of_the_newest_run(small_pipeline, tmp_path):
    root, _, _ = small_pipeline
    out = tmp_path / "rebuilt.html"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [repo] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    result = subprocess.run([sys.executable, "-m", "evaluation.report", "--pipeline-root", root,
                             "--output", str(out)], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)
    page = out.read_text(encoding="utf-8")
    assert set(_embedded_pngs(page)) == set(PLOT_IDS)
    # Read now, so it is the summary of the same (newest) run the CLI read.
    with open(os.path.join(root, "run_summary.json")) as f:
        on_disk = json.load(f)
    k = on_disk["gate"]["k"]
    assert _point_at(_drawn_recall(page)["recall@K"]["model"], k) == \
        on_disk["evaluation"][f"recall@{k}"]


def test_a_report_failure_is_a_warning_not_an_error(tmp_path):
    from runner import local
    lines = []
    summary = {"timings": {"component_seconds": {}, "peak_memory_mb": {}}}
    # No evaluator record: the report cannot be built, and the run must still succeed.
    assert local.write_run_report(str(tmp_path), [], None, summary, log=lines.append) is None
    assert any(line.startswith("[report] WARNING: could not write the report") for line in lines)
    assert not (tmp_path / report.REPORT_FILE).exists()
