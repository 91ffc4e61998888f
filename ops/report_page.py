"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script, nothing fetched.

Job data is untrusted (answers, verifier reasons, alert messages quote it): every text goes through
`charts.esc`, and the page's Content-Security-Policy forbids scripts and every network fetch besides, so
even a missed escape could neither run code nor call out.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from typing import Any

from cascade.ops.charts import (
    PALETTE,
    Series,
    bar_chart,
    esc,
    hbar_chart,
    line_chart,
    meter_chart,
    percent,
    usd,
    usd_tick,
)
from cascade.ops.report import Report
from cascade.worker.counters import LATENCY_BOUNDS_MS

REJECT_ROWS = 12        # reject reasons shown; the rest are summed as "other"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;margin:0;background:#f4f6f9}
main{max-width:1400px;margin:0 auto;padding:20px 28px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}
.sub{color:#5b6678;margin:0 0 16px}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 18px;padding:0}
.figures div{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;min-width:130px}
.figures dt{color:#5b6678;font-size:12px}.figures dd{margin:0;font-size:19px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:16px}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:12px 14px;overflow-x:auto}
section.wide{grid-column:1/-1}
.note{color:#5b6678;font-size:12px;margin:6px 0 0}.empty{color:#5b6678;font-style:italic}
table{border-collapse:collapse;font-size:13px;margin-top:6px}
th,td{text-align:left;padding:3px 10px 3px 0;border-bottom:1px solid #eef1f5;vertical-align:top}
td.n,th.n{text-align:right}
svg.chart{max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#3b4554}svg .legend{font-size:12px}
svg .grid{stroke:#e6eaef}svg .band{fill:#3a9d5d;opacity:.16}svg .baseline{stroke:#3a9d5d;stroke-dasharray:4 3}
svg .limit{stroke:#b04a4a;stroke-dasharray:4 3}
.fired{color:#b04a4a;font-weight:600}.cleared{color:#3a9d5d}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _when(epoch: float | None) -> str:
    return "-" if not epoch else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _figure(key: str, label: str, shown: str, value: Any) -> str:
    return (f'<div><dt>{esc(label)}</dt><dd data-figure="{esc(key)}" data-value="{esc(value)}">{esc(shown)}</dd></div>')


def render(report: Report) -> str:
    """The whole page."""
    sections = [_cost(report), *_escalation(report), _rejects(report), _shadow(report), _latency(report),
                _budget(report), _alerts(report), _batches(report)]
    last = report.ladder[-1] if report.ladder else "last tier"
    share = report.savings_nanos / report.counterfactual_nanos if report.counterfactual_nanos else 0.0
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())) or "none"
    figures = "".join([
        _figure("jobs", "jobs", f"{report.jobs:,}", report.jobs),
        _figure("batches", "batches", str(len(report.batches)), len(report.batches)),
        _figure("cost_usd", "cost", usd(report.cost_nanos / 1e9), report.cost_nanos / 1e9),
        _figure("last_tier_cost_usd", f"every job on {last} alone", usd(report.counterfactual_nanos / 1e9),
                report.counterfactual_nanos / 1e9),
        _figure("savings_usd", "savings", f"{usd(report.savings_nanos / 1e9)} ({percent(share)})",
                report.savings_nanos / 1e9),
        _figure("alerts", "alerts", str(sum(1 for a in report.alerts if a["state"] == "fired")),
                sum(1 for a in report.alerts if a["state"] == "fired")),
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>Cascade report: {esc(report.title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>Cascade report: {esc(report.title)}</h1>"
            f'<p class="sub">pipeline {esc(report.pipeline)}; {esc(_when(report.start))} to {esc(_when(report.end))}; '
            f"statuses: {esc(statuses)}; made {esc(_when(report.made_at))}</p>"
            f'<dl class="figures">{figures}</dl><div class="grid">{"".join(sections)}</div></main></body></html>\n')


def _section(key: str, title: str, body: str, wide: bool = False) -> str:
    return f'<section{" class=wide" if wide else ""} data-section="{esc(key)}"><h2>{esc(title)}</h2>{body}</section>'


def _cost(report: Report) -> str:
    tiers = [report.tiers[t] for t in report.ladder if t in report.tiers]
    last = report.ladder[-1] if report.ladder else "last tier"
    categories = [t.tier for t in tiers] + ["cascade", f"always {last}"]
    values = tuple(t.cost_nanos / 1e9 for t in tiers) + (report.cost_nanos / 1e9, report.counterfactual_nanos / 1e9)
    colors = (PALETTE[0],) * len(tiers) + (PALETTE[2], "#7a8799")
    chart = bar_chart("cost", "cost per tier, the cascade's total and every job on the last tier alone", categories,
                      [Series("cost", values, colors=colors)], fmt=usd, tick=usd_tick)
    rows = "".join(f'<tr data-tier="{esc(t.tier)}"><td>{esc(t.tier)}</td><td class=n>{t.attempts:,}</td>'
                   f"<td class=n>{t.escalated:,}</td><td class=n>{percent(t.escalation_rate)}</td>"
                   f"<td class=n>{t.final_jobs:,}</td><td class=n>{esc(usd(t.cost_nanos / 1e9))}</td></tr>"
                   for t in tiers)
    table = ("<table><tr><th>tier</th><th class=n>attempts</th><th class=n>escalated</th><th class=n>rate</th>"
             f"<th class=n>final jobs</th><th class=n>cost</th></tr>{rows}</table>")
    return _section("cost", "Cost per tier and savings", chart + table)


def _escalation(report: Report) -> list[str]:
    out = []
    labels = _window_labels(report)
    for tier in report.ladder[:-1]:
        values = tuple((c[0] / c[1]) if (c := w.tiers.get(tier)) and c[1] else None for w in report.windows)
        baseline = report.baselines.get(tier)
        band = None
        note = f"no baseline for {tier}: set [alerts] baselines, run cascade calibrate, or keep earlier batches"
        if baseline is not None:
            points = report.band_points / 100
            band = (max(0.0, baseline.rate - points), baseline.rate, min(1.0, baseline.rate + points))
            note = (f"baseline {percent(baseline.rate)} ({baseline.source}); band +/- {report.band_points:g} points "
                    "([alerts] escalation_points)")
        if any(v is not None for v in values):
            body = line_chart(f"escalation-{tier}", f"escalation rate of {tier} over time", labels,
                              [Series(f"{tier} escalation rate", values)], band=band)
        else:
            body = f'<p class="empty">no attempts on {esc(tier)}</p>'
        size = max((w.jobs for w in report.windows), default=0)
        out.append(_section(f"escalation-{tier}", f"Escalation rate over time: {tier}",
                            body + f'<p class="note">{esc(note)}; one point per {size} jobs or fewer (x: job numbers or UTC time)</p>'))
    return out


def _window_labels(report: Report) -> list[str]:
    """When the windows ended (UTC); their job numbers instead when they all ended within the same hour."""
    ends = [w.ended_at for w in report.windows if w.ended_at]
    if ends and max(ends) - min(ends) >= 3600:
        return [time.strftime("%m-%d %H:%M", time.gmtime(w.ended_at)) if w.ended_at else w.batch
                for w in report.windows]
    labels, first = [], 1
    for w in report.windows:
        labels.append(f"{first}-{first + w.jobs - 1}")
        first += w.jobs
    return labels


def _rejects(report: Report) -> str:
    ranked = report.rejects.most_common()
    if not ranked:
        return _section("rejects", "Reject reasons", '<p class="empty">no rejected attempts</p>')
    shown = [(f"{tier} \u00b7 {verifier}: {reason}" if reason else f"{tier} \u00b7 {verifier}", n)
             for (tier, verifier, reason), n in ranked[:REJECT_ROWS]]
    rest = sum(n for _, n in ranked[REJECT_ROWS:])
    if rest:
        shown.append(("other", rest))
    chart = hbar_chart("rejects", "first failing verifier per rejected attempt", shown, fmt=lambda v: f"{v:,.0f}")
    return _section("rejects", "Reject reasons (first failing verifier per rejected attempt)", chart)


def _shadow(report: Report) -> str:
    if not report.shadow:
        return _section("shadow", "Shadow agreement", '<p class="empty">no shadow pairs in this period</p>')
    by_tier: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for pair in report.shadow:
        by_tier[pair["tier"]][0] += int(pair["agree"])
        by_tier[pair["tier"]][1] += 1
    tiers = [t for t in report.ladder if t in by_tier] + sorted(set(by_tier) - set(report.ladder))
    agree, total = sum(v[0] for v in by_tier.values()), len(report.shadow)
    chart = bar_chart("shadow", "shadow agreement with the last tier", [f"{t} ({by_tier[t][1]})" for t in tiers],
                      [Series("agreement", tuple(by_tier[t][0] / by_tier[t][1] for t in tiers), "#3a9d5d")],
                      fmt=percent, y_max=1.0)
    cost = sum(p.get("cost_nanos") or 0 for p in report.shadow) / 1e9
    baseline = f"; baseline {percent(report.agreement_baseline)}" if report.agreement_baseline else ""
    note = (f'<p class="note" data-figure="shadow_pairs" data-value="{total}">{total} pairs, agreement '
            f"{percent(agree / total)}{esc(baseline)}; shadow calls cost {esc(usd(cost))}, apart from the batch "
            "cost</p>")
    return _section("shadow", "Shadow agreement (answers accepted early, re-run on the last tier)", chart + note)


def _latency(report: Report) -> str:
    tiers = [report.tiers[t] for t in report.ladder if t in report.tiers and report.tiers[t].latencies]
    if not tiers:
        return _section("latency", "Latency per tier", '<p class="empty">no attempts with a latency</p>')
    bounds = list(LATENCY_BOUNDS_MS)
    counts = {t.tier: Counter(next((i for i, b in enumerate(bounds) if ms <= b), len(bounds)) for ms in t.latencies)
              for t in tiers}
    used = sorted({i for c in counts.values() for i in c})
    span = range(used[0], used[-1] + 1)
    categories = [f"\u2264{bounds[i]:,} ms" if i < len(bounds) else f">{bounds[-1]:,} ms" for i in span]
    series = [Series(t.tier, tuple(counts[t.tier][i] / len(t.latencies) for i in span)) for t in tiers]
    chart = bar_chart("latency", "share of each tier's calls by latency", categories, series, fmt=percent)
    rows = "".join(f"<tr><td>{esc(t.tier)}</td><td class=n>{len(t.latencies):,}</td>"
                   f"<td class=n>{_quantile(t.latencies, 0.5):,.0f}</td><td class=n>{_quantile(t.latencies, 0.95):,.0f}"
                   f"</td><td class=n>{max(t.latencies):,.0f}</td></tr>" for t in tiers)
    table = ("<table><tr><th>tier</th><th class=n>calls</th><th class=n>p50 ms</th><th class=n>p95 ms</th>"
             f"<th class=n>max ms</th></tr>{rows}</table>")
    return _section("latency", "Latency distribution per tier (call latency of every attempt)", chart + table)


def _quantile(values, q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _budget(report: Report) -> str:
    rows = [(row["id"], row["cost_nanos"] / 1e9, row["budget_nanos"] / 1e9) for row in report.batches]
    chart = meter_chart("budget", "cost against budget per batch", rows)
    return _section("budget", "Budget use per batch", chart)


def _alerts(report: Report) -> str:
    if not report.alerts:
        return _section("alerts", "Alerts in the period", '<p class="empty">no alerts in this period</p>', wide=True)
    rows = "".join(
        f'<tr data-alert="{a["id"]}"><td>{esc(_when(a["at"]))}</td><td>{esc(a["kind"])}</td>'
        f'<td class="{esc(a["state"])}">{esc(a["state"])}</td><td>{esc(a["tier"])}</td>'
        f"<td class=n>{esc(_number(a['baseline']))}</td><td class=n>{esc(_number(a['value']))}</td>"
        f"<td>{esc(a['window'])}</td><td>{esc(a['message'])}</td><td>{esc(a['check'])}</td></tr>"
        for a in report.alerts)
    table = ("<table><tr><th>at</th><th>kind</th><th>state</th><th>tier</th><th class=n>baseline</th>"
             f"<th class=n>value</th><th>window</th><th>message</th><th>what to check</th></tr>{rows}</table>")
    return _section("alerts", "Alerts in the period", table, wide=True)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _batches(report: Report) -> str:
    rows = "".join(
        f'<tr data-batch="{esc(b["id"])}"><td>{esc(b["id"])}</td><td>{esc(b["state"])}</td>'
        f"<td class=n>{b['done']:,}/{b['total']:,}</td><td class=n>{esc(usd(b['cost_nanos'] / 1e9))}</td>"
        f"<td class=n>{esc(usd(b['counterfactual_nanos'] / 1e9))}</td><td>{esc(_when(b['submitted_at']))}</td>"
        f"<td>{esc(_when(b['finished_at']))}</td></tr>" for b in report.batches)
    table = ("<table><tr><th>batch</th><th>state</th><th class=n>done</th><th class=n>cost</th>"
             f"<th class=n>last tier alone</th><th>submitted</th><th>finished</th></tr>{rows}</table>")
    return _section("batches", "Batches", table, wide=True)
