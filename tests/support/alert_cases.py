"""promtool unit-test cases of every alert in monitoring/rules: a firing and a quiet case each.

A :class:`Case` gives input series (promtool's expanding notation: ``'0+10x30'`` is 0, 10,
20, ... 31 samples one ``interval`` apart), one evaluation time, and the alerts expected
firing then (each with its labels and the value of its expression). :func:`promtool_tests`
turns the cases of one rule file into a promtool test file; the expected annotations are
the rule's templates rendered by :func:`monitoring.alerts.render`, so promtool also checks
that renderer against Prometheus' own templating.

Each alert rule is an (alertname, severity) pair: a case counts as a *firing* case of the
rules it expects and as a *quiet* case of the other rules of the same alert name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitoring.alerts import render
from support.paths import REPO

RULES = REPO / "monitoring" / "rules"


@dataclass(frozen=True)
class Fires:
    """An alert expected firing: its severity, its expression's labels and value."""

    severity: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """Series, an evaluation time, and what fires then (empty: nothing)."""

    why: str
    alert: str
    series: dict[str, str]
    at: str
    fires: tuple[Fires, ...] = ()
    interval: str = "1m"


W, C = "warning", "critical"
WORKER = {"instance": "127.0.0.1:40001", "role": "worker"}
TRAINER = {"instance": "127.0.0.1:40002", "role": "trainer"}
REFRESH = {"instance": "127.0.0.1:40003", "role": "backbone"}
SERVE = {"instance": "127.0.0.1:40004", "role": "serve"}


def sel(name: str, labels: dict[str, str], **more: str) -> str:
    """A series selector ``name{k="v",...}``."""
    items = {**labels, **more}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in items.items()) + "}"


def hist(name: str, labels: dict[str, str], counts: dict[str, str]) -> dict[str, str]:
    """The ``_bucket`` series of a histogram: ``le`` -> values."""
    return {sel(f"{name}_bucket", labels, le=le): v for le, v in counts.items()}


# -- ingest -------------------------------------------------------------------------------
LAG_W = sel("lumstream_worker_consumer_lag", WORKER, topic="lum.events", partition="0")
LAG_S_W = sel("lumstream_worker_consumer_lag_seconds", WORKER, topic="lum.events", partition="0")
BATCHES = sel("lumstream_worker_batches_total", WORKER)
E2S = "lumstream_worker_event_to_store_seconds"
REJ = sel("lumstream_events_rejected_total", WORKER, stage="worker", reason="malformed_json")
APPLIED = sel("lumstream_worker_events_applied_total", WORKER, partition="0")

INGEST = [
    Case(
        "two minutes behind and growing for 20 minutes",
        "LumstreamWorkerLagGrowing",
        {LAG_S_W: "120x40", LAG_W: "1000+100x40"},
        "20m",
        (Fires(W, 120, WORKER),),
    ),
    Case(
        "two minutes behind but not growing",
        "LumstreamWorkerLagGrowing",
        {LAG_S_W: "120x40", LAG_W: "1000x40"},
        "20m",
    ),
    Case(
        "growing but only 30 s behind",
        "LumstreamWorkerLagGrowing",
        {LAG_S_W: "30x40", LAG_W: "1000+100x40"},
        "20m",
    ),
    Case(
        "records waiting and no batch for 15 minutes",
        "LumstreamWorkerStalled",
        {LAG_W: "500x30", BATCHES: "100x30"},
        "15m",
        (Fires(C, 500, WORKER),),
    ),
    Case(
        "records waiting while batches commit",
        "LumstreamWorkerStalled",
        {LAG_W: "500x30", BATCHES: "100+10x30"},
        "15m",
    ),
    Case(
        "every event takes 2-5 s to the store",
        "LumstreamEventToStoreSlow",
        hist(E2S, WORKER, {"1": "0x30", "2": "0x30", "5": "0+100x30", "+Inf": "0+100x30"}),
        "20m",
        (Fires(W, 4.97),),
    ),
    Case(
        "every event takes 0.5-1 s",
        "LumstreamEventToStoreSlow",
        hist(E2S, WORKER, {"1": "0+100x30", "2": "0+100x30", "5": "0+100x30", "+Inf": "0+100x30"}),
        "20m",
    ),
    Case(
        "2% dead letters",
        "LumstreamDeadLetterRateHigh",
        {REJ: "0+120x60", APPLIED: "0+5880x60"},
        "40m",
        (Fires(W, 0.02),),
    ),
    Case(
        "10% dead letters",
        "LumstreamDeadLetterRateHigh",
        {REJ: "0+600x60", APPLIED: "0+5400x60"},
        "40m",
        (Fires(W, 0.1), Fires(C, 0.1)),
    ),
    Case(
        "0.5% dead letters",
        "LumstreamDeadLetterRateHigh",
        {REJ: "0+30x60", APPLIED: "0+5970x60"},
        "40m",
    ),
]

# -- backbone -----------------------------------------------------------------------------
BB_TS = sel("lumstream_backbone_version_timestamp_seconds", REFRESH)
FAILURES = sel("lumstream_backbone_refresh_failures_total", REFRESH)
REFRESHED = sel("lumstream_backbone_refresh_duration_seconds_count", REFRESH)
VEC_TS = sel("lumstream_vectors_computed_timestamp_seconds", TRAINER, consumer="ranker")
SHIFT = sel("lumstream_backbone_vector_shift", REFRESH, stat="mean")

BACKBONE = [
    Case("no version seen yet (0)", "LumstreamBackboneStale", {BB_TS: "0x400"}, "370m"),
    Case("no LUM vectors in use (0)", "LumstreamRankerVectorsStale", {VEC_TS: "0x200"}, "140m"),
    Case(
        "newest version 70 minutes old",
        "LumstreamBackboneStale",
        {BB_TS: "60x100"},
        "70m",
        (Fires(W, 4140),),
    ),
    Case(
        "newest version over six hours old",
        "LumstreamBackboneStale",
        {BB_TS: "60x400"},
        "370m",
        (Fires(W, 22140), Fires(C, 22140)),
    ),
    Case("newest version 50 minutes old", "LumstreamBackboneStale", {BB_TS: "60x100"}, "50m"),
    Case(
        "every refresh of the hour failed",
        "LumstreamBackboneRefreshFailing",
        {FAILURES: "0+1x12", REFRESHED: "5x12"},
        "60m",
        (Fires(W, 6),),
        interval="10m",
    ),
    Case(
        "one failure among six refreshes",
        "LumstreamBackboneRefreshFailing",
        {FAILURES: "0 0 0 0 1 1 1", REFRESHED: "0+1x6"},
        "60m",
        interval="10m",
    ),
    Case(
        "the ranker's vectors are 2h20m old",
        "LumstreamRankerVectorsStale",
        {VEC_TS: "60x200"},
        "140m",
        (Fires(W, 8340, {"instance": TRAINER["instance"]}),),
    ),
    Case(
        "the ranker's vectors are 100 minutes old",
        "LumstreamRankerVectorsStale",
        {VEC_TS: "60x200"},
        "100m",
    ),
    Case(
        "vectors moved a mean 0.7",
        "LumstreamBackboneVectorsMovedFar",
        {SHIFT: "0.7x10"},
        "5m",
        (Fires(W, 0.7),),
    ),
    Case("vectors moved a mean 0.2", "LumstreamBackboneVectorsMovedFar", {SHIFT: "0.2x10"}, "5m"),
]

# -- ranker -------------------------------------------------------------------------------
T_INST = {"instance": TRAINER["instance"]}
SCORE_PSI = sel("lumstream_ranker_score_psi", TRAINER)
FEATURE_PSI = sel("lumstream_ranker_feature_psi", TRAINER, feature="condition")
SCORES_SUM = sel("lumstream_ranker_scores_sum", TRAINER)
SCORES_COUNT = sel("lumstream_ranker_scores_count", TRAINER)
CLICKS = sel("lumstream_ranker_clicks_total", TRAINER)
REF_TS = sel("lumstream_ranker_reference_timestamp_seconds", TRAINER)
REF_CTR = sel("lumstream_ranker_reference_ctr", TRAINER)
R_TS = sel("lumstream_ranker_version_timestamp_seconds", TRAINER)
LAG_T = sel("lumstream_ranker_consumer_lag", TRAINER, partition="0")
LAG_S_T = sel("lumstream_ranker_consumer_lag_seconds", TRAINER, partition="0")
S2V = "lumstream_ranker_sample_to_version_seconds"
FEAT = {**T_INST, "feature": "condition"}

RANKER = [
    Case("no version published yet (0)", "LumstreamRankerStale", {R_TS: "0x300"}, "250m"),
    Case(
        "score PSI 0.15 for 20 minutes",
        "LumstreamRankerScoreDrift",
        {SCORE_PSI: "0.15x30"},
        "20m",
        (Fires(W, 0.15, T_INST),),
    ),
    Case(
        "score PSI 0.4 for 20 minutes",
        "LumstreamRankerScoreDrift",
        {SCORE_PSI: "0.4x30"},
        "20m",
        (Fires(W, 0.4, T_INST), Fires(C, 0.4, T_INST)),
    ),
    Case(
        "score PSI 0.4 for 10 minutes only (pending)",
        "LumstreamRankerScoreDrift",
        {SCORE_PSI: "0.4x30"},
        "10m",
    ),
    Case("score PSI 0.05", "LumstreamRankerScoreDrift", {SCORE_PSI: "0.05x30"}, "20m"),
    Case(
        "condition PSI 0.2",
        "LumstreamRankerFeatureDrift",
        {FEATURE_PSI: "0.2x30"},
        "20m",
        (Fires(W, 0.2, FEAT),),
    ),
    Case(
        "condition PSI 0.3",
        "LumstreamRankerFeatureDrift",
        {FEATURE_PSI: "0.3x30"},
        "20m",
        (Fires(W, 0.3, FEAT), Fires(C, 0.3, FEAT)),
    ),
    Case("condition PSI 0.05", "LumstreamRankerFeatureDrift", {FEATURE_PSI: "0.05x30"}, "20m"),
    Case(
        "predicts 1.5 times the clicks",
        "LumstreamRankerCalibration",
        {SCORES_SUM: "0+15x100", CLICKS: "0+10x100", REF_TS: "1x100"},
        "60m",
        (Fires(W, 1.5, T_INST),),
    ),
    Case(
        "predicts 2.5 times the clicks",
        "LumstreamRankerCalibration",
        {SCORES_SUM: "0+25x100", CLICKS: "0+10x100", REF_TS: "1x100"},
        "60m",
        (Fires(W, 2.5, T_INST), Fires(C, 2.5, T_INST)),
    ),
    Case(
        "predicts 2.5 times the clicks but is still warming up (no reference)",
        "LumstreamRankerCalibration",
        {SCORES_SUM: "0+25x100", CLICKS: "0+10x100", REF_TS: "0x100"},
        "60m",
    ),
    Case(
        "predicts 2.5 times the clicks, but the reference is younger than the 30-minute window",
        "LumstreamRankerCalibration",
        {SCORES_SUM: "0+25x100", CLICKS: "0+10x100", REF_TS: "0x50 1x50"},
        "60m",
    ),
    Case(
        "calibrated",
        "LumstreamRankerCalibration",
        {SCORES_SUM: "0+10x100", CLICKS: "0+10x100", REF_TS: "1x100"},
        "60m",
    ),
    Case(
        "click rate doubled against the reference",
        "LumstreamRankerLabelRateShift",
        {CLICKS: "0+20x100", SCORES_COUNT: "0+100x100", REF_CTR: "0.1x100"},
        "60m",
        (Fires(W, 2, T_INST),),
    ),
    Case(
        "no reference yet (0): no click rate to compare with",
        "LumstreamRankerLabelRateShift",
        {CLICKS: "0+20x100", SCORES_COUNT: "0+100x100", REF_CTR: "0x100"},
        "60m",
    ),
    Case(
        "click rate 10% above the reference",
        "LumstreamRankerLabelRateShift",
        {CLICKS: "0+11x100", SCORES_COUNT: "0+100x100", REF_CTR: "0.1x100"},
        "60m",
    ),
    Case(
        "newest version 40 minutes old",
        "LumstreamRankerStale",
        {R_TS: "60x300"},
        "40m",
        (Fires(W, 2340),),
    ),
    Case(
        "newest version over four hours old",
        "LumstreamRankerStale",
        {R_TS: "60x300"},
        "250m",
        (Fires(W, 14940), Fires(C, 14940)),
    ),
    Case("newest version 20 minutes old", "LumstreamRankerStale", {R_TS: "60x300"}, "20m"),
    Case(
        "ten minutes behind lum.samples and growing",
        "LumstreamTrainerLagGrowing",
        {LAG_S_T: "600x40", LAG_T: "1000+100x40"},
        "20m",
        (Fires(W, 600, TRAINER),),
    ),
    Case(
        "growing but 100 s behind",
        "LumstreamTrainerLagGrowing",
        {LAG_S_T: "100x40", LAG_T: "1000+100x40"},
        "20m",
    ),
    Case(
        "samples waiting and nothing scored",
        "LumstreamTrainerStalled",
        {LAG_T: "800x30", SCORES_COUNT: "5000x30"},
        "15m",
        (Fires(C, 800, TRAINER),),
    ),
    Case(
        "samples waiting while it learns",
        "LumstreamTrainerStalled",
        {LAG_T: "800x30", SCORES_COUNT: "5000+512x30"},
        "15m",
    ),
    Case(
        "samples wait 5-10 minutes for a version",
        "LumstreamRankerFreshnessSlow",
        hist(S2V, TRAINER, {"90": "0x100", "300": "0x100", "600": "0+50x100", "+Inf": "0+50x100"}),
        "60m",
        (Fires(W, 597),),
    ),
    Case(
        "samples wait 1-1.5 minutes",
        "LumstreamRankerFreshnessSlow",
        hist(
            S2V,
            TRAINER,
            {"90": "0+50x100", "300": "0+50x100", "600": "0+50x100", "+Inf": "0+50x100"},
        ),
        "60m",
    ),
]

# -- serving ------------------------------------------------------------------------------
REQ = "lumstream_serving_request_seconds"
OK_FAST = sel(f"{REQ}_bucket", SERVE, endpoint="rank", status="ok", le="0.01")
OK_ALL = sel(f"{REQ}_count", SERVE, endpoint="rank", status="ok")
ERRORS = sel(f"{REQ}_count", SERVE, endpoint="rank", status="error")
S_PSI = sel("lumstream_serving_score_psi", SERVE)
S_MODEL = sel("lumstream_serving_model_version_timestamp_seconds", SERVE)
S_VEC = sel("lumstream_vectors_computed_timestamp_seconds", SERVE, consumer="serving")
S_INST = {"instance": SERVE["instance"]}

SERVING = [
    Case("no version loaded yet (0)", "LumstreamServingModelStale", {S_MODEL: "0x100"}, "70m"),
    Case("no vectors read yet (0)", "LumstreamServingVectorsStale", {S_VEC: "0x200"}, "140m"),
    Case(
        "half the requests over 10 ms for an hour",
        "LumstreamServingLatencyBudgetBurn",
        {OK_FAST: "0+50x100", OK_ALL: "0+100x100"},
        "60m",
        (Fires(C, 0.5), Fires(W, 0.5)),
    ),
    Case(
        "5% of requests over 10 ms for an hour",
        "LumstreamServingLatencyBudgetBurn",
        {OK_FAST: "0+95x100", OK_ALL: "0+100x100"},
        "60m",
        (Fires(W, 0.05),),
    ),
    Case(
        "slow for 50 minutes, fast for the last 40: the burn stopped, the day's budget is hit",
        "LumstreamServingLatencyBudgetBurn",
        {OK_FAST: "0x50 100+100x50", OK_ALL: "0+100x100"},
        "90m",
        (Fires(W, 1 - 4000 / 9000),),
    ),
    Case(
        "0.5% of requests over 10 ms",
        "LumstreamServingLatencyBudgetBurn",
        {OK_FAST: "0+995x100", OK_ALL: "0+1000x100"},
        "60m",
    ),
    Case(
        "5% of requests fail",
        "LumstreamServingAvailabilityBudgetBurn",
        {OK_ALL: "0+95x100", ERRORS: "0+5x100"},
        "60m",
        (Fires(C, 0.05), Fires(W, 0.05)),
    ),
    Case(
        "0.5% of requests fail",
        "LumstreamServingAvailabilityBudgetBurn",
        {OK_ALL: "0+995x100", ERRORS: "0+5x100"},
        "60m",
        (Fires(W, 0.005),),
    ),
    Case(
        "0.05% of requests fail",
        "LumstreamServingAvailabilityBudgetBurn",
        {OK_ALL: "0+9995x100", ERRORS: "0+5x100"},
        "60m",
    ),
    Case(
        "served score PSI 0.15",
        "LumstreamServingScoreDrift",
        {S_PSI: "0.15x30"},
        "20m",
        (Fires(W, 0.15, S_INST),),
    ),
    Case(
        "served score PSI 0.3",
        "LumstreamServingScoreDrift",
        {S_PSI: "0.3x30"},
        "20m",
        (Fires(W, 0.3, S_INST), Fires(C, 0.3, S_INST)),
    ),
    Case("served score PSI 0.05", "LumstreamServingScoreDrift", {S_PSI: "0.05x30"}, "20m"),
    Case(
        "serves a version 70 minutes old",
        "LumstreamServingModelStale",
        {S_MODEL: "60x100"},
        "70m",
        (Fires(W, 4140, S_INST),),
    ),
    Case(
        "serves a version 50 minutes old", "LumstreamServingModelStale", {S_MODEL: "60x100"}, "50m"
    ),
    Case(
        "reads vectors 2h20m old",
        "LumstreamServingVectorsStale",
        {S_VEC: "60x200"},
        "140m",
        (Fires(W, 8340, S_INST),),
    ),
    Case(
        "reads vectors 100 minutes old", "LumstreamServingVectorsStale", {S_VEC: "60x200"}, "100m"
    ),
    Case(
        "the served log's Kafka is down for 6 minutes",
        "LumstreamServedListsNotLogged",
        {sel("lumstream_served_log_kafka_up", SERVE): "1 1 0x10"},
        "8m",
        (Fires(C, 0, S_INST),),
    ),
    Case(
        "the served log missed one shipping round",
        "LumstreamServedListsNotLogged",
        {sel("lumstream_served_log_kafka_up", SERVE): "1 1 0 1x10"},
        "8m",
    ),
    Case(
        "clicks reach served histories after 5-10 s",
        "LumstreamServingHistoryStale",
        hist(
            "lumstream_serving_history_freshness_seconds",
            SERVE,
            {"3": "0x60", "5": "0x60", "10": "0+100x60", "+Inf": "0+100x60"},
        ),
        "40m",
        (Fires(W, 9.95),),
    ),
    Case(
        "clicks reach served histories within 1-1.5 s",
        "LumstreamServingHistoryStale",
        hist(
            "lumstream_serving_history_freshness_seconds",
            SERVE,
            {"1.5": "0+100x60", "3": "0+100x60", "5": "0+100x60", "+Inf": "0+100x60"},
        ),
        "40m",
    ),
]

# -- processes ----------------------------------------------------------------------------
UP = sel("up", WORKER, job="lumstream")
PROCESSES = [
    Case(
        "the worker answers no scrape for 5 minutes",
        "LumstreamProcessDown",
        {UP: "1 1 0 0 0 0 0 0"},
        "7m",
        (Fires(C, 0, {**WORKER, "job": "lumstream"}),),
    ),
    Case(
        "the worker missed one minute of scrapes (pending)",
        "LumstreamProcessDown",
        {UP: "1 1 1 1 1 1 0 0"},
        "7m",
    ),
    Case("the worker answers", "LumstreamProcessDown", {UP: "1x8"}, "7m"),
]

CASES: dict[str, list[Case]] = {
    "ingest.yml": INGEST,
    "backbone.yml": BACKBONE,
    "ranker.yml": RANKER,
    "serving.yml": SERVING,
    "processes.yml": PROCESSES,
}


def alert_rules(rule_file: Path) -> list[dict[str, Any]]:
    """The alerting rules of a rule file."""
    doc = yaml.safe_load(rule_file.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def promtool_tests(
    rule_file: Path, cases: list[Case], evaluation_interval: str = "1m"
) -> dict[str, Any]:
    """A promtool test file (as a dict) with one test group per case."""
    rules = alert_rules(rule_file)
    tests = []
    for case in cases:
        expected = []
        for f in case.fires:
            rule = next(
                (
                    r
                    for r in rules
                    if r["alert"] == case.alert and r["labels"]["severity"] == f.severity
                ),
                None,
            )
            if rule is None:
                raise KeyError(f"{rule_file.name}: no rule {case.alert} with severity {f.severity}")
            expected.append(
                {
                    "exp_labels": {**rule["labels"], **f.labels},
                    "exp_annotations": {
                        k: render(v, f.labels, f.value) for k, v in rule["annotations"].items()
                    },
                }
            )
        tests.append(
            {
                "name": case.why,
                "interval": case.interval,
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}
                ],
            }
        )
    groups = [g["name"] for g in yaml.safe_load(rule_file.read_text())["groups"]]
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": evaluation_interval,
        # recording rules before the alerts that read them (else promtool's order is random)
        "group_eval_order": groups,
        "tests": tests,
    }


def coverage() -> dict[tuple[str, str, str], dict[str, int]]:
    """(rule file, alert, severity) -> {"firing": cases, "quiet": cases}, for every rule."""
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for name in sorted(p.name for p in RULES.glob("*.yml")):
        for rule in alert_rules(RULES / name):
            out.setdefault(
                (name, rule["alert"], rule["labels"]["severity"]), {"firing": 0, "quiet": 0}
            )
    for name, cases in CASES.items():
        for case in cases:
            firing = {f.severity for f in case.fires}
            for (file, alert, severity), counts in out.items():
                if file == name and alert == case.alert:
                    counts["firing" if severity in firing else "quiet"] += 1
    return out
