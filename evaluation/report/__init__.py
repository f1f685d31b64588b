"""``<pipeline-root>/report.html``: one self-contained page with the run's plots.

Plots (matplotlib, Agg backend, embedded as base64 PNGs, so the file can be mailed
or opened offline):

* recall@K and coverage@K of the model against the baselines on the evaluator's split
* popularity bias: the train popularity of the items the model recommends to eval
  users, against the popularity of the catalog items
* the compression trade-off: size against recall for every method the compressor tried
* training loss per epoch
* wall time (and peak memory) of every pipeline component

Everything comes from artifacts the run recorded in ML Metadata, plus the prepared
split for item popularity; the recommendations are asked from the Trainer's
SavedModel through ``serving_default``.

Modules: ``collect`` reads a run (``inputs`` holds what it read), ``bias`` and
``baselines`` compute what the run did not record, ``plots`` and ``compression_plot``
draw, ``page`` writes the HTML; ``python -m evaluation.report`` rebuilds a report.
Nothing here imports the runner, the pipeline or the components (``layout`` has the
file names), so the runner can import this package without a cycle.
"""
from evaluation.report.collect import collect, from_pipeline_root
from evaluation.report.compression_plot import compression_points, plot_compression
from evaluation.report.inputs import PopularityBias, ReportInputs, method_metrics
from evaluation.report.page import REPORT_FILE, render_html, write_report
from evaluation.report.plots import (plot_popularity_bias, plot_recall_curves, plot_timings,
                                     plot_training)

__all__ = ["REPORT_FILE", "PopularityBias", "ReportInputs", "collect", "compression_points",
           "from_pipeline_root", "method_metrics", "plot_compression", "plot_popularity_bias",
           "plot_recall_curves", "plot_timings", "plot_training", "render_html",
           "write_report"]
