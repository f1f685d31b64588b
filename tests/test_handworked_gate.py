"""The blessing gate (components/retrieval_evaluator/gate.py), one check at a time.

Each check is tested just at, and just past, a boundary worked out by hand:

* default floors = min(1, 2 * k / max(1, catalog)), used for both recall and coverage;
* recall_floor and coverage_floor pass at equality (>=);
* beats_popularity is strict (>): a tie with popularity fails;
* no_regression needs recall >= base * (1 - tolerance); no baseline passes.

Numbers are chosen to be exact in binary floating point (k = 8, catalog = 64,
baseline 0.5) so equality at the boundary is exact.
"""
import pytest

from components.retrieval_evaluator.gate import GateConfig, run_gate

K = 8
CATALOG = 64  # default floors: 2 * 8 / 64 = 16 / 64 = 0.25


def _gate(recall=0.5, coverage=0.5, pop=0.1, base=None, cfg=None, catalog=CATALOG):
    cfg = cfg or GateConfig(k=K)
    model = {f"recall@{K}": recall, f"coverage@{K}": coverage}
    baseline = None if base is None else {f"recall@{K}": base}
    return {c.name: c for c in run_gate(cfg, model, {f"recall@{K}": pop}, baseline, catalog)}


def test_default_floors():
    # 2 * 8 / 64 = 0.25 for both
    assert GateConfig(k=8).floors(64) == {"min_recall": 0.25, "min_coverage": 0.25}
    # k = 50, catalog 1000: 2 * 50 / 1000 = 0.1
    assert GateConfig(k=50).floors(1000)["min_recall"] == pytest.approx(0.1)
    # k = 50, catalog 80: 100 / 80 = 1.25 -> capped at 1
    assert GateConfig(k=50).floors(80) == {"min_recall": 1.0, "min_coverage": 1.0}
    # catalog 0 -> max(1, 0) = 1 -> 2 * 50 / 1 = 100 -> capped at 1
    assert GateConfig(k=50).floors(0)["min_coverage"] == 1.0
    # explicit floors win, each independently
    assert GateConfig(k=8, min_recall=0.03).floors(64) == {"min_recall": 0.03,
                                                           "min_coverage": 0.25}


@pytest.mark.parametrize("recall, passed", [(0.25, True), (0.2499, False)])
def test_recall_floor_at_default(recall, passed):
    # floor 0.25 (2 * 8 / 64); recall 0.25 >= 0.25 passes, 0.2499 does not
    check = _gate(recall=recall, pop=0.0)["recall_floor"]
    assert (check.passed, check.threshold) == (passed, 0.25)


@pytest.mark.parametrize("recall, passed", [(0.125, True), (0.12, False)])
def test_recall_floor_explicit(recall, passed):
    check = _gate(recall=recall, pop=0.0,
                  cfg=GateConfig(k=K, min_recall=0.125))["recall_floor"]
    assert (check.passed, check.threshold) == (passed, 0.125)


@pytest.mark.parametrize("coverage, passed", [(0.25, True), (0.2499, False)])
def test_coverage_floor_at_default(coverage, passed):
    check = _gate(coverage=coverage)["coverage_floor"]
    assert (check.passed, check.threshold) == (passed, 0.25)
    # message: value, floor and the signed difference 0.2499 - 0.25 = -0.0001
    if not passed:
        assert check.message == "coverage@8 0.2499 vs floor 0.2500 (-0.0001)"


def test_coverage_floor_capped_at_one_needs_full_coverage():
    # catalog 12: 2 * 8 / 12 = 1.33 -> floor 1; covering 11 of 12 (0.9167) fails
    checks = _gate(coverage=11 / 12, catalog=12)
    assert checks["coverage_floor"].threshold == 1.0
    assert not checks["coverage_floor"].passed
    assert _gate(coverage=1.0, catalog=12)["coverage_floor"].passed


@pytest.mark.parametrize("recall, pop, passed", [(0.375, 0.375, False),  # tie fails
                                                 (0.375, 0.37, True),
                                                 (0.37, 0.375, False)])
def test_beats_popularity_is_strict(recall, pop, passed):
    check = _gate(recall=recall, pop=pop)["beats_popularity"]
    assert (check.passed, check.threshold) == (passed, pop)


def test_no_regression_without_baseline_passes():
    check = _gate(recall=0.0, base=None)["no_regression"]
    assert (check.passed, check.threshold) == (True, 0.0)


@pytest.mark.parametrize("recall, passed", [(0.475, True), (0.4749, False)])
def test_no_regression_default_tolerance(recall, passed):
    # base 0.5, tolerance 0.05: need = 0.5 * (1 - 0.05) = 0.5 * 0.95 = 0.475
    check = _gate(recall=recall, base=0.5)["no_regression"]
    assert check.threshold == pytest.approx(0.475)
    assert check.passed is passed


def test_no_regression_custom_tolerance_and_message():
    cfg = GateConfig(k=K, regression_tolerance=0.25)
    # need = 0.5 * (1 - 0.25) = 0.375
    assert _gate(recall=0.375, base=0.5, cfg=cfg)["no_regression"].passed
    check = _gate(recall=0.37, base=0.5, cfg=cfg)["no_regression"]
    assert (check.passed, check.threshold) == (False, 0.375)
    # relative drop = (0.5 - 0.37) / 0.5 = 0.13 / 0.5 = 0.26 -> "-26.00%"
    assert check.message == ("recall@8 0.3700 vs served 0.5000 "
                             "(relative change -26.00%, tolerance -25%)")
    # an improvement passes: 0.6 >= 0.375; change (0.6 - 0.5) / 0.5 = +20.00%
    assert "+20.00%" in _gate(recall=0.6, base=0.5, cfg=cfg)["no_regression"].message


def test_no_regression_against_a_zero_baseline():
    # base 0: need = 0 * 0.95 = 0, and the relative drop is defined as 0 (no division)
    check = _gate(recall=0.0, base=0.0)["no_regression"]
    assert check.passed and check.threshold == 0.0


def test_all_four_checks_reported_in_order():
    # recall 0.5 >= 0.25, coverage 0.5 >= 0.25, 0.5 > 0.1, 0.5 >= 0.5 * 0.95 = 0.475
    checks = run_gate(GateConfig(k=K), {"recall@8": 0.5, "coverage@8": 0.5},
                      {"recall@8": 0.1}, {"recall@8": 0.5}, CATALOG)
    assert [c.name for c in checks] == ["recall_floor", "coverage_floor",
                                        "beats_popularity", "no_regression"]
    assert all(c.passed for c in checks)


def test_config_validation():
    with pytest.raises(ValueError, match="gate k must be >= 1"):
        GateConfig(k=0)
    with pytest.raises(ValueError, match=r"regression_tolerance must be in \[0, 1\)"):
        GateConfig(regression_tolerance=1.0)
