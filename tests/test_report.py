"""The HTML report renders offline: tables, inline figures, the headline figures."""

from __future__ import annotations

import base64
import re

from netadapt_core import report_html


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_report_is_one_self_contained_page(tmp_path):
    metrics = {"baseline": {"measured_ms": 4.0, "macs": 5e6, "params": 3e5, "test_accuracy": 0.9},
               "final": {"measured_ms": 1.9, "macs": 2e6, "params": 1e5, "test_accuracy": 0.895, "finetuned": True},
               "speedup_measured": 4.0 / 1.9, "iterations": 2, "status": "done", "reason": None,
               "budget_ms": 2.0, "budget_met_measured": True}
    tradeoff = [{"iteration": 0, "group": "", "measured_ms": 4.0}, {"iteration": 1, "group": "conv<1>", "measured_ms": 3.0},
                {"iteration": 2, "group": "b", "measured_ms": 1.9}]
    lut = [{"network": "adapt_iter_001", "lut_ms": "3.1", "measured_ms": "3.0", "rel_error": "0.033"},
           {"network": "adapt_iter_002", "lut_ms": "1.8", "measured_ms": "1.9", "rel_error": "-0.053"}]
    context = {"title": "net", "created": "now", "cpu": "AMD EPYC", "platform": "torch-cpu",
               "timings": {"adapt": 12.5}, "setup": {"model": "mobilenet_v1"}}
    page = report_html.render(metrics, tradeoff, [{"layer": "a", "original_filters": 8, "adapted_filters": 4}], lut,
                              {"trade-off": _png(tmp_path / "t.png"), "missing": tmp_path / "none.png"}, context)
    path = report_html.write(tmp_path / "report.html", page)
    text = path.read_text()
    assert "2.11x" in text and "90.00% &rarr; 89.50%" in text and "4.000 &rarr; 1.900 ms" in text
    assert "conv&lt;1&gt;" in text  # table cells escaped
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 1 and base64.b64decode(images[0]).startswith(b"\x89PNG")  # the missing figure is left out
    assert "over the run's 2 picks: median |error| 4.3%, max 5.3%" in text
    assert "AMD EPYC" in text and "http" not in text and text.count("<table>") == 5
