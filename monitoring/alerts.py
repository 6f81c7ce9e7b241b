"""Which alerts fired, when and why: read from Prometheus' HTTP API.

:func:`fired_alerts` lists every alert that was *firing* at some evaluation between two
times (also those resolved since), from the ``ALERTS`` and ``ALERTS_FOR_STATE`` series
Prometheus keeps of its alerting rules: when it became pending, when it first fired, when
it stopped, its labels, and its annotations (summary, description). An alert still active
has the annotations Prometheus rendered; a resolved one gets its rule's templates rendered
here (:func:`render`), with ``$value`` the value of the rule's expression when it first
fired. The rule files use only the template functions :func:`render` knows (a test checks).

Example:
    >>> for a in fired_alerts("http://127.0.0.1:9090", since=started):  # doctest: +SKIP
    ...     print(a.line(started))
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

_INTERNAL = ("__name__", "alertstate")


class ApiError(RuntimeError):
    """Prometheus' HTTP API did not answer, or answered an error; the message says which."""


def api(
    url: str, path: str, params: Mapping[str, str] | None = None, timeout_s: float = 10.0
) -> Any:
    """``GET url + path`` of the Prometheus API; the ``data`` of a successful answer.

    Raises:
        ApiError: unreachable, or ``status`` not ``success`` (with Prometheus' error).
    """
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url}{path}{query}", timeout=timeout_s) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            raise ApiError(f"{url}{path}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(f"{url}{path}: {exc}") from None
    if body.get("status") != "success":
        raise ApiError(f"{url}{path}: {body.get('errorType', '')}: {body.get('error', body)}")
    return body["data"]


def query(url: str, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
    """An instant query: (labels, value) per series of the resulting vector."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = api(url, "/api/v1/query", params)
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]


def query_range(
    url: str, expr: str, start: float, end: float, step_s: float
) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    """A range query: (labels, [(time, value), ...]) per series."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
    data = api(url, "/api/v1/query_range", params)
    return [
        (dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]
    ]


# -- templates ----------------------------------------------------------------------------
def humanize(v: float) -> str:
    """Prometheus' ``humanize``: SI prefixes, 4 significant digits (``1.234k``, ``12m``)."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return _g4(v) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return _g4(v) + prefix


def humanize_duration(v: float) -> str:
    """Prometheus' ``humanizeDuration``: ``1d 2h 3m 4s``, ``2m 0s``, ``4.97s``, ``500ms``."""
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return _g4(v) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        whole = int(abs(v))
        seconds, minutes = whole % 60, (whole // 60) % 60
        hours, days = (whole // 3600) % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(abs(v))}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_g4(v)}{prefix}s"


def _g4(v: float) -> str:
    """Go's ``%.4g``."""
    return _go_exponent(f"{v:.4g}")


def _go_exponent(text: str) -> str:
    return text.replace("inf", "Inf").replace("nan", "NaN")


def go_value(v: float) -> str:
    """Go's default formatting of a float64 (``fmt.Sprint``, ``%v``: the
    shortest digits that round-trip, exponent form below 1e-4 and from 1e6 up)."""
    if math.isnan(v) or math.isinf(v):
        return _go_exponent(repr(v))
    if v == 0:
        return "0"
    sign, digits, exp = Decimal(repr(v)).normalize().as_tuple()
    assert isinstance(exp, int)
    mantissa = "".join(map(str, digits))
    point = len(mantissa) + exp  # digits before the decimal point
    e = point - 1
    neg = "-" if sign else ""
    if e < -4 or e >= 6:
        body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        return f"{neg}{body}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{mantissa}"
    if point >= len(mantissa):
        return f"{neg}{mantissa}{'0' * (point - len(mantissa))}"
    return f"{neg}{mantissa[:point]}.{mantissa[point:]}"


_FUNCS = {
    "": go_value,
    "humanize": humanize,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": lambda v: f"{_g4(v * 100)}%",
}
_ACTION = re.compile(r"{{\s*(.*?)\s*}}")
_LABEL = re.compile(r"^\$labels\.([A-Za-z_][A-Za-z0-9_]*)$")
_VALUE = re.compile(r"^\$value(?:\s*\|\s*(\w+))?$")
_PRINTF = re.compile(r'^printf\s+"(%[-+ 0#]*\d*(?:\.\d+)?[dfgeEs])"\s+\$value$')


class TemplateError(ValueError):
    """A template action :func:`render` does not know."""


def render(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """Render the subset of Prometheus' alert templates the project's rules use:
    ``{{ $labels.NAME }}``, ``{{ $value }}``, ``{{ $value | humanize }}``,
    ``| humanizeDuration``, ``| humanizePercentage`` and ``{{ printf "%.2f" $value }}``.
    ``$value`` unknown (None) renders as ``?``.

    Raises:
        TemplateError: any other action.

    Example:
        >>> render("{{ $labels.role }}: {{ $value | humanizeDuration }}", {"role": "worker"}, 90)
        'worker: 1m 30s'
    """

    def action(m: re.Match[str]) -> str:
        body = m.group(1)
        if label := _LABEL.match(body):
            return labels.get(label.group(1), "")
        if val := _VALUE.match(body):
            func = _FUNCS.get(val.group(1) or "")
            if func is None:
                raise TemplateError(f"unknown template function in {m.group(0)!r}")
            return "?" if value is None else func(value)
        if fmt := _PRINTF.match(body):
            return "?" if value is None else fmt.group(1) % value
        raise TemplateError(f"unknown template action {m.group(0)!r}")

    return _ACTION.sub(action, template)


# -- what fired ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FiredAlert:
    """An alert that fired.

    Args:
        name: the alert (``alertname``).
        labels: its labels (severity, component, the expression's: instance, feature...).
        annotations: summary, description (rendered).
        active_at: when it became pending (unix seconds; its ``for:`` started).
        firing_at: the first evaluation seen firing (within the query's step).
        resolved_at: the first evaluation after it stopped firing; None while it fires.
        value: the value of its expression when it first fired (None if unknown).
    """

    name: str
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    active_at: float = 0.0
    firing_at: float = 0.0
    resolved_at: float | None = None
    value: float | None = None

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    def line(self, t0: float | None = None) -> str:
        """One line: when (seconds after ``t0``, else UTC), name, severity, summary."""

        def when(t: float) -> str:
            if t0 is not None:
                return f"+{t - t0:.0f}s"
            return time.strftime("%H:%M:%S", time.gmtime(t))

        span = f"fired {when(self.firing_at)}"
        span += f", resolved {when(self.resolved_at)}" if self.resolved_at else ", still firing"
        summary = self.annotations.get("summary", "")
        return f"{self.name} [{self.severity}] {span}: {summary}"


def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k not in _INTERNAL))


def _runs(values: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    """(first, last) time of each run of samples with no gap wider than 1.5 steps."""
    if not values:
        return []
    times = [t for t, _ in values]
    runs, start, prev = [], times[0], times[0]
    for t in times[1:]:
        if t - prev > 1.5 * step:
            runs.append((start, prev))
            start = t
        prev = t
    runs.append((start, prev))
    return runs


def fired_alerts(
    url: str, since: float, until: float | None = None, step_s: float | None = None
) -> list[FiredAlert]:
    """Every alert firing at some evaluation in ``[since, until]`` (default: until now), in
    the order they first fired; an alert that fired, resolved and fired again is listed once
    per episode.

    Args:
        url: Prometheus (``http://host:port``).
        step_s: the resolution of the times (default: a 1000th of the span, at least 1 s).
    Raises:
        ApiError: Prometheus did not answer.
    """
    until = time.time() if until is None else until
    step = step_s or max(1.0, (until - since) / 1000.0)
    firing = query_range(url, 'ALERTS{alertstate="firing"}', since, until, step)
    if not firing:
        return []
    for_state = {
        _key(labels): values
        for labels, values in query_range(url, "ALERTS_FOR_STATE", since, until, step)
    }
    active = {_key(a["labels"]): a for a in api(url, "/api/v1/alerts")["alerts"]}
    rules = [
        r
        for g in api(url, "/api/v1/rules", {"type": "alert"})["groups"]
        for r in g["rules"]
        if r.get("type") == "alerting"
    ]
    out: list[FiredAlert] = []
    for labels, values in firing:
        key = _key(labels)
        clean = dict(key)
        name = clean.get("alertname", "")
        for first, last in _runs(values, step):
            resolved = last + step if last + step <= until - step else None
            active_at = first
            for t, v in for_state.get(key, []):
                if first - step <= t <= first + step:
                    active_at = min(v, first)
                    break
            rule = _rule_for(rules, name, clean)
            value = _value_at(url, rule, clean, first) if rule is not None else None
            if resolved is None and key in active:
                annotations = dict(active[key].get("annotations", {}))
            elif rule is not None:
                annotations = {
                    k: _safe_render(t, clean, value) for k, t in rule.get("annotations", {}).items()
                }
            else:
                annotations = {}
            out.append(
                FiredAlert(
                    name,
                    {k: v for k, v in clean.items() if k != "alertname"},
                    annotations,
                    active_at,
                    first,
                    resolved,
                    value,
                )
            )
    return sorted(out, key=lambda a: (a.firing_at, a.name))


def _rule_for(
    rules: list[dict[str, Any]], name: str, labels: Mapping[str, str]
) -> dict[str, Any] | None:
    """The alerting rule ``name`` whose own labels the alert carries (severity...)."""
    for r in rules:
        if r.get("name") == name and all(
            labels.get(k) == v for k, v in r.get("labels", {}).items()
        ):
            return r
    return None


def _value_at(
    url: str, rule: Mapping[str, Any], labels: Mapping[str, str], at: float
) -> float | None:
    """The rule's expression at ``at``, for the series the alert came from."""
    try:
        results = query(url, str(rule["query"]), at)
    except ApiError:
        return None
    for series, value in results:
        if all(labels.get(k) == v for k, v in series.items() if k != "__name__"):
            return value
    return None


def _safe_render(template: str, labels: Mapping[str, str], value: float | None) -> str:
    try:
        return render(template, labels, value)
    except TemplateError:
        return template
