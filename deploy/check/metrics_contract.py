#!/usr/bin/env python3
"""Checks that the alert rules, their unit tests and the dashboard keep to docs/metrics.md.

Run by deploy/check/run.sh (needs PyYAML). Fails (exit 1) when:

- the catalogue table of docs/metrics.md is malformed (a row without a backticked
  `tidemark_*` name, an unknown type, a counter without `_total`, a unit that
  contradicts the name's suffix, a name listed twice);
- an expression in deploy/prometheus/alerts.yml or deploy/grafana/tidemark.json, or a
  series in deploy/prometheus/alerts_test.yml, names a metric that is not catalogued
  (`NAME_bucket`, `_sum`, `_count` only for histograms), a label the metric does not
  have, a value outside the label's fixed set, an `le` that is no bucket bound, or a
  recording rule that alerts.yml does not define;
- an alert lacks `summary`, `description` or a `runbook` pointing to a heading of
  docs/operating.md, or a `severity` label;
- an alert is not shown by alerts_test.yml both to fire (a case with expected alerts) and
  to stay silent (a case with none);
- the dashboard is malformed (duplicate panel ids or refIds, a panel without a query or
  outside the 24-column grid, a data source other than the `datasource` variable).

With --dashboard-rules FILE it also writes every dashboard query as a recording rule, so
that `promtool check rules FILE` parses each one as PromQL.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TYPES = {"counter", "gauge", "histogram"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series; queries may use them on any metric.
TARGET_LABELS = {"job", "instance"}
# Grafana's interval variables, replaced before the queries are parsed as PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
DURATION_BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60"]
FRESHNESS_BUCKETS = ["0.1", "0.25", "0.5", "1", "2", "5", "10", "30", "60", "300", "900"]


@dataclass
class Metric:
    name: str
    type: str
    unit: str
    # label -> allowed values (None: not a fixed set)
    labels: dict[str, set[str] | None] = field(default_factory=dict)


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


# ---------------------------------------------------------------------------- catalogue


def parse_catalogue(path: Path, problems: Problems) -> dict[str, Metric]:
    """The rows of the table whose header starts with `| name | type | unit | labels |`."""
    metrics: dict[str, Metric] = {}
    in_table = False
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
            continue
        if [c.lower() for c in cells[:4]] == ["name", "type", "unit", "labels"]:
            in_table = True
            continue
        if not in_table or set(cells[0]) <= set("-: "):
            continue
        where = f"{path}:{lineno}"
        if len(cells) != 5:
            problems.add(where, f"expected 5 cells (name, type, unit, labels, meaning), got {len(cells)}")
            continue
        m = re.fullmatch(r"`(tidemark_[a-z0-9_]+)`", cells[0])
        if not m:
            problems.add(where, f"first cell must be a backticked tidemark_* name, got {cells[0]!r}")
            continue
        name, mtype, unit = m.group(1), cells[1], cells[2]
        if name in metrics:
            problems.add(where, f"{name} is listed twice")
        if mtype not in TYPES:
            problems.add(where, f"{name}: unknown type {mtype!r}")
        if (mtype == "counter") != name.endswith("_total"):
            problems.add(where, f"{name}: counters, and only counters, end in _total")
        if name.endswith("_seconds") != (unit == "seconds"):
            problems.add(where, f"{name}: a name ending in _seconds has unit seconds, and only such a name")
        if name.endswith("_ratio") != (unit == "ratio"):
            problems.add(where, f"{name}: a name ending in _ratio has unit ratio, and only such a name")
        if mtype == "histogram" and unit != "seconds":
            problems.add(where, f"{name}: histograms here measure seconds")
        metrics[name] = Metric(name, mtype, unit, parse_labels(cells[3], where, problems))
    if not metrics:
        problems.add(str(path), "no catalogue table found (header `| name | type | unit | labels | meaning |`)")
    return metrics


def parse_labels(cell: str, where: str, problems: Problems) -> dict[str, set[str] | None]:
    """`—` or `` `a`: `x`, `y`; `b` `` -> {"a": {"x", "y"}, "b": None}."""
    if cell in ("—", "-", ""):
        return {}
    labels: dict[str, set[str] | None] = {}
    for part in cell.split(";"):
        m = re.fullmatch(r"\s*`([a-z_][a-z0-9_]*)`\s*(?::\s*(.+))?", part)
        if not m:
            problems.add(where, f"cannot read label {part.strip()!r}")
            continue
        values = None
        if m.group(2):
            values = set(re.findall(r"`([^`]+)`", m.group(2)))
            if not values:
                problems.add(where, f"label {m.group(1)}: values must be backticked")
        labels[m.group(1)] = values
    return labels


# ---------------------------------------------------------------------------- PromQL


SELECTOR = re.compile(r"\b(tidemark_[A-Za-z0-9_]+)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
RECORDED = re.compile(r"\b(tidemark:[A-Za-z0-9_:]+)")


def resolve(name: str, catalogue: dict[str, Metric]) -> tuple[Metric | None, str]:
    """The catalogued metric a series name belongs to, and the histogram suffix used."""
    if name in catalogue:
        return catalogue[name], ""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in catalogue and catalogue[base].type == "histogram":
            return catalogue[base], suffix
    return None, ""


def buckets_of(metric: Metric) -> list[str]:
    return FRESHNESS_BUCKETS if metric.name == "tidemark_freshness_seconds" else DURATION_BUCKETS


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def check_le(metric: Metric, op: str, value: str, where: str, problems: Problems) -> None:
    bounds = buckets_of(metric) + ["+Inf"]
    spellings = [b for b in bounds] + [f"{float(b)}" for b in bounds if b != "+Inf"]
    if op == "=":
        if value not in spellings:
            problems.add(where, f'{metric.name}: le="{value}" is not a bucket bound ({", ".join(bounds)})')
    elif op == "=~":
        try:
            pattern = re.compile(unescape(value))
        except re.error as err:
            problems.add(where, f"{metric.name}: bad le regex {value!r}: {err}")
            return
        if not any(pattern.fullmatch(s) for s in spellings):
            problems.add(where, f"{metric.name}: le=~{value!r} matches no bucket bound")


def check_expr(expr: str, where: str, catalogue: dict[str, Metric], recorded: set[str], problems: Problems) -> set[str]:
    """Checks one PromQL expression; returns the catalogued metrics it uses."""
    used: set[str] = set()
    metrics_here: list[Metric] = []
    # Drop string literals' content outside selectors? Expressions here have none but
    # label matchers, which SELECTOR reads with their braces.
    for m in SELECTOR.finditer(expr):
        name, braces = m.group(1), m.group(2)
        metric, suffix = resolve(name, catalogue)
        if metric is None:
            problems.add(where, f"{name} is not in docs/metrics.md")
            continue
        used.add(metric.name)
        metrics_here.append(metric)
        allowed = set(metric.labels) | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        for label, op, raw in MATCHER.findall(braces or ""):
            value = unescape(raw) if op in ("=", "!=") else raw
            if label == "__name__":
                continue
            if label not in allowed:
                problems.add(where, f"{name} has no label {label!r} (has: {', '.join(sorted(allowed))})")
                continue
            if label == "le":
                check_le(metric, op, raw, where, problems)
                continue
            fixed = metric.labels.get(label)
            if fixed is None:
                continue
            if op in ("=", "!="):
                if value not in fixed:
                    problems.add(where, f'{name}: {label}="{value}" is not one of {sorted(fixed)}')
            else:
                alternatives = unescape(raw).split("|")
                if all(re.fullmatch(r"[A-Za-z0-9_]+", a) for a in alternatives):
                    for a in alternatives:
                        if a not in fixed:
                            problems.add(where, f"{name}: {label}=~ names {a!r}, not one of {sorted(fixed)}")
    for m in RECORDED.finditer(expr):
        if m.group(1) not in recorded:
            problems.add(where, f"recording rule {m.group(1)} is not defined in alerts.yml")
    known_labels = set(TARGET_LABELS) | {"le"}
    for metric in metrics_here:
        known_labels |= set(metric.labels)
    for m in GROUPING.finditer(expr):
        for label in filter(None, (x.strip() for x in m.group(1).split(","))):
            if label not in known_labels:
                problems.add(where, f"groups by {label!r}, which no metric of the expression has")
    return used


# ---------------------------------------------------------------------------- files


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6}\s+(.*)", line)):
            found.add(slug(m.group(1)))
    return found


def check_rules(path: Path, catalogue, operating: Path, problems: Problems) -> tuple[list[str], set[str]]:
    doc = yaml.safe_load(path.read_text())
    rules = [r for g in doc.get("groups", []) for r in g.get("rules", [])]
    recorded = {r["record"] for r in rules if "record" in r}
    headings = anchors(operating)
    alerts: list[str] = []
    used: set[str] = set()
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        where = f"{path} ({name})"
        used |= check_expr(rule["expr"], where, catalogue, recorded, problems)
        if "alert" not in rule:
            continue
        alerts.append(name)
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            if not str(ann.get(key, "")).strip():
                problems.add(where, f"annotation {key!r} missing")
        runbook = str(ann.get("runbook", ""))
        m = re.fullmatch(r"docs/operating\.md#([\w-]+)", runbook)
        if runbook and not m:
            problems.add(where, f"runbook must be docs/operating.md#<section>, got {runbook!r}")
        elif m and m.group(1) not in headings:
            problems.add(where, f"runbook anchor #{m.group(1)} is no heading of {operating}")
        if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.add(where, "label severity must be critical or warning")
    if len(alerts) != len(set(alerts)):
        problems.add(str(path), "an alert name is used twice")
    return alerts, used


def check_tests(path: Path, alerts: list[str], catalogue, problems: Problems) -> None:
    doc = yaml.safe_load(path.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for test in doc.get("tests", []):
        where = f"{path} ({test.get('name', '?')})"
        for series in test.get("input_series", []):
            check_expr(series["series"], where, catalogue, set(), problems)
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            if name not in alerts:
                problems.add(where, f"tests {name}, which alerts.yml does not define")
            (firing if case.get("exp_alerts") else silent).add(name)
    for name in alerts:
        if name not in firing:
            problems.add(str(path), f"{name}: no case where it fires")
        if name not in silent:
            problems.add(str(path), f"{name}: no case where it stays silent")


def dashboard_panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def check_dashboard(path: Path, catalogue, problems: Problems) -> tuple[list[tuple[str, str]], set[str]]:
    dash = json.loads(path.read_text())
    queries: list[tuple[str, str]] = []
    used: set[str] = set()
    if not dash.get("uid") or not dash.get("title"):
        problems.add(str(path), "dashboard needs a uid and a title")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problems.add(str(path), "needs a `datasource` variable of type datasource")
    ids = set()
    for panel in dashboard_panels(dash):
        pid = panel.get("id")
        where = f"{path} (panel {pid} {panel.get('title')!r})"
        if pid in ids:
            problems.add(where, "duplicate panel id")
        ids.add(pid)
        grid = panel.get("gridPos", {})
        if grid.get("x", 0) + grid.get("w", 0) > 24 or grid.get("w", 0) <= 0 or grid.get("h", 0) <= 0:
            problems.add(where, f"gridPos {grid} is outside the 24-column grid")
        if panel.get("type") == "row":
            continue
        if not panel.get("title"):
            problems.add(where, "panel without a title")
        targets = panel.get("targets", [])
        if not targets:
            problems.add(where, "panel without a query")
        refids = [t.get("refId") for t in targets]
        if len(refids) != len(set(refids)):
            problems.add(where, "duplicate refId")
        for target in [panel] + targets:
            ds = target.get("datasource")
            if ds is not None and ds != {"type": "prometheus", "uid": "${datasource}"}:
                problems.add(where, f"data source must be the `datasource` variable, got {ds}")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.add(where, f"query {t.get('refId')} is empty")
                continue
            used |= check_expr(expr, where, catalogue, set(), problems)
            if "tidemark_" not in expr:
                problems.add(where, f"query {t.get('refId')} uses no tidemark metric")
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                problems.add(where, f"query {t.get('refId')} uses an unknown variable: {expr}")
            queries.append((f"dashboard:panel{pid}_{t.get('refId')}", expr))
    return queries, used


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=root)
    ap.add_argument("--dashboard-rules", type=Path, help="write the dashboard queries as a rules file here")
    args = ap.parse_args()
    r = args.root
    problems = Problems()
    catalogue = parse_catalogue(r / "docs/metrics.md", problems)
    alerts, used_alerts = check_rules(r / "deploy/prometheus/alerts.yml", catalogue, r / "docs/operating.md", problems)
    check_tests(r / "deploy/prometheus/alerts_test.yml", alerts, catalogue, problems)
    queries, used_dash = check_dashboard(r / "deploy/grafana/tidemark.json", catalogue, problems)
    if args.dashboard_rules:
        rules = {"groups": [{"name": "dashboard", "rules": [{"record": n, "expr": e} for n, e in queries]}]}
        args.dashboard_rules.write_text(yaml.safe_dump(rules, sort_keys=False))
    for p in problems.items:
        print(f"  {p}", file=sys.stderr)
    unused = sorted(set(catalogue) - used_dash)
    print(
        f"{len(catalogue)} catalogued metrics; alerts use {len(used_alerts)}, the dashboard "
        f"{len(used_dash)} in {len(queries)} queries"
        + (f" (not on the dashboard: {', '.join(unused)})" if unused else "")
        + f"; {len(alerts)} alerts, each tested firing and silent"
        if not problems.items
        else f"{len(problems.items)} problem(s)"
    )
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
