"""``reports/report.html``: one self-contained page a person reads without opening code.

Everything is inline (CSS, figures as base64 PNG, tables), so the file opens offline, mails as one
attachment, and sits in MLflow and DVC as one artifact. It holds: the headline (budget, measured
speedup, accuracy before and after), the machine it was measured on, the trade-off table (one row
per iteration), filters per layer, the LUT check over the run's own picks, and time per stage.
"""

from __future__ import annotations

import base64
import html
import statistics
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.kpi{display:flex;gap:1em;flex-wrap:wrap}
.kpi div{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:9em}.kpi b{display:block;font-size:1.4em}
.ok{color:#1a7f37}.bad{color:#b42318}figure{display:inline-block;margin:.5em}img{max-width:100%;border:1px solid #eee}
.small{color:#666;font-size:.85em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None, left: tuple[str, ...] = ()) -> str:
    if not rows:
        return "<p class=small>(none)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th class={'l' if c in left else 'r'}>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td class={'l' if c in left else 'r'}>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return _e(f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}")
    return _e(value)


def _figure(path: Path, caption: str) -> str:
    if not path.is_file() or path.stat().st_size == 0:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption class=small>{_e(caption)}</figcaption></figure>")


def render(metrics: dict[str, Any], tradeoff: list[dict[str, Any]], layers: list[dict[str, Any]],
           lut_check: list[dict[str, Any]], plots: dict[str, Path], context: dict[str, Any]) -> str:
    """The page as a string (``write`` saves it)."""
    base, final = metrics["baseline"], metrics["final"]
    met = metrics.get("budget_met_measured")
    accuracy = ""
    if "test_accuracy" in final:
        accuracy = (f"<div>test accuracy<b>{100 * base['test_accuracy']:.2f}% &rarr; "
                    f"{100 * final['test_accuracy']:.2f}%</b>{'after long-term fine-tuning' if final.get('finetuned') else ''}"
                    "</div>")
    budget = (f"<div>budget (measured)<b class={'ok' if met else 'bad'}>{metrics['budget_ms']:.3f} ms "
              f"{'met' if met else 'missed'}</b></div>") if "budget_ms" in metrics else ""
    kpis = (f"<div class=kpi><div>measured latency<b>{base['measured_ms']:.3f} &rarr; {final['measured_ms']:.3f} ms</b>"
            f"</div><div>speedup (measured)<b>{metrics['speedup_measured']:.2f}x</b></div>{accuracy}{budget}"
            f"<div>iterations<b>{metrics['iterations']}</b>status {_e(metrics['status'])}</div>"
            f"<div>MACs<b>{base['macs'] / 1e6:.1f} &rarr; {final['macs'] / 1e6:.1f} M</b></div>"
            f"<div>parameters<b>{base['params'] / 1e6:.2f} &rarr; {final['params'] / 1e6:.2f} M</b></div></div>")
    reason = f"<p class=bad>{_e(metrics['reason'])}</p>" if metrics.get("reason") else ""
    setup = _table([{"setting": k, "value": v} for k, v in context["setup"].items()], left=("setting", "value"))
    timing = _table([{"stage": k, "seconds": v} for k, v in context["timings"].items()], left=("stage",))
    figures = "".join(_figure(path, caption) for caption, path in plots.items())
    picks = [r for r in lut_check if str(r.get("network", "")).startswith("adapt_iter_")]
    errors = sorted(abs(float(r["rel_error"])) for r in picks if r.get("rel_error") not in (None, ""))
    lut_line = (f"<p>LUT estimate against measurement over the run's {len(errors)} picks: median |error| "
                f"{100 * statistics.median(errors):.1f}%, max {100 * errors[-1]:.1f}%.</p>") if errors else ""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>netadapt report: {_e(context['title'])}</title>
<style>{STYLE}</style></head><body>
<h1>netadapt: {_e(context['title'])}</h1>
<p class=small>{_e(context['created'])} &middot; measured on {_e(context['cpu'])} &middot; platform {_e(context['platform'])}</p>
{kpis}{reason}
<h2>Accuracy against latency</h2>{figures}
<h2>Trade-off: one network per iteration</h2>
<p class=small>Each row is a point of the accuracy/latency trade-off (holdout accuracy after short-term
fine-tuning; test accuracy where the point was long-term fine-tuned).</p>
{_table(tradeoff, left=("group",))}
<h2>Filters per layer</h2>{_table(layers, left=("layer",))}
<h2>LUT against measurement</h2>{lut_line}{_table(lut_check, left=("network",))}
<h2>Time per stage</h2>{timing}
<h2>Setup</h2>{setup}
</body></html>
"""


def write(path: str | Path, page: str) -> Path:
    path = Path(path)
    atomic_write_bytes(path, page.encode())
    return path


def created() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
