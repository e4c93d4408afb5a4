"""The metric names a PromQL expression reads, and the sample names a system exports.

Enough of PromQL for the expressions in deploy/observability (no PromQL parser ships with
the tools here): strings, label matchers, ranges and the label lists of `by`, `without`,
`on`, `ignoring` and `group_*` are dropped; of the names left, those called like a
function and the language's keywords are not metrics.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip
# Series Prometheus makes itself for every target it scrapes.
SCRAPER_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'" + r"|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# `max by (x) (...)`: the label list goes with its keyword, so `max` reads as a call.
_GROUPING = re.compile(r"\b(by|without)\s*\([^()]*\)")
_LABEL_LIST = re.compile(r"\b(on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names expr selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names: set[str] = set()
    for match in _NAME.finditer(text):
        name, called = match.group(1), match.group(2)
        if called or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_names(exposition: str) -> set[str]:
    """Every sample name a /metrics page can carry: its samples' names, and for each family
    (listed even before it has a sample) the names its type gives its samples."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(f"{family.name}{suffix}" for suffix in SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names
