"""The outer-loop engine (sgld_tuner.core.engine) on oracles whose every step is known exactly.

The oracle is the gradient of ``f(lam) = lam^2 / 2`` (``grad = lam``), so plain SGD with step
``lr`` maps ``lam`` to ``lam + (-lr) * lam``; a Python float recurrence with the same IEEE
operations predicts every value bit for bit. Non-finite values and Ctrl-C are injected on
chosen oracle calls.
"""
import math
import warnings

import pytest
import torch

from sgld_tuner.core import (Callbacks, Listener, OracleResult, OuterLoop, RollbackOnNonFinite,
                             StopOnNonFinite, Timeout)
from sgld_tuner.core.engine import warn_at_caller


class QuadraticOracle:
    """grad = lam, outer_loss = lam^2 / 2; NaN or KeyboardInterrupt on chosen calls (1-based)."""

    def __init__(self, nan_calls=(), interrupt_call=None, corrupt_before_interrupt=False):
        self.calls, self.nan_calls, self.interrupt_call = 0, set(nan_calls), interrupt_call
        self.corrupt = corrupt_before_interrupt

    def __call__(self, lam):
        self.calls += 1
        if self.calls == self.interrupt_call:
            if self.corrupt:  # a step cut in half: lam already changed
                with torch.no_grad():
                    lam[0].add_(100.0)
            raise KeyboardInterrupt
        value = float(lam[0])
        if self.calls in self.nan_calls:
            return OracleResult([torch.full_like(lam[0], math.nan)], math.nan, math.nan, False)
        return OracleResult([lam[0].detach().clone()], value * value / 2, 0.0, True)


def sgd_values(lam0, lrs):
    """lam after each SGD step with the given step sizes, as torch computes it."""
    out, lam = [], lam0
    for lr in lrs:
        lam = lam + (-lr) * lam
        out.append(lam)
    return out


def make_engine(oracle, n_outer=5, lr=0.1, lam0=1.0, **kwargs):
    lam = [torch.tensor([lam0], dtype=torch.float64, requires_grad=True)]
    optimizer = torch.optim.SGD(lam, lr=lr)
    return OuterLoop(oracle, lam, optimizer, n_outer=n_outer, **kwargs)


class HookLog(Listener):
    def __init__(self):
        self.calls = []

    def on_run_begin(self, engine):
        self.calls.append("run_begin")

    def on_iteration_begin(self, engine):
        self.calls.append(f"begin{engine.iteration}")

    def on_record(self, engine, record):
        record["extra"] = engine.iteration  # added inside the timed span, before counting
        self.calls.append(f"record{record['iteration']}")

    def on_iteration_end(self, engine, record):
        assert engine.iteration == record["iteration"] + 1 and engine.records[-1] is record
        self.calls.append(f"end{record['iteration']}")

    def on_run_end(self, engine):
        self.calls.append("run_end")


def test_steps_and_records_follow_sgd_exactly():
    engine = make_engine(QuadraticOracle(), n_outer=5).run()
    expected = sgd_values(1.0, [0.1] * 5)
    assert float(engine.lam[0]) == expected[-1]
    assert [r["iteration"] for r in engine.records] == [0, 1, 2, 3, 4]
    before = [1.0] + expected[:-1]  # the oracle sees lam before each step
    assert [r["outer_loss"] for r in engine.records] == [v * v / 2 for v in before]
    assert [r["hypergrad_norm"] for r in engine.records] == [abs(v) for v in before]
    assert engine.stop_reason is None and not engine.failed and engine.iteration == 5


def test_hooks_run_in_order_and_on_record_columns_are_timed():
    log = HookLog()
    engine = make_engine(QuadraticOracle(), n_outer=2, listeners=[log]).run()
    assert log.calls == ["run_begin", "begin0", "record0", "end0", "begin1", "record1", "end1",
                         "run_end"]
    assert list(engine.records[0]) == ["iteration", "outer_loss", "inner_loss",
                                       "hypergrad_norm", "extra", "time_s"]


def test_a_resumed_run_starts_at_its_iteration_and_appends():
    earlier = [{"iteration": 0}]
    engine = make_engine(QuadraticOracle(), n_outer=3, start=1, records=earlier).run()
    assert engine.records is earlier and [r["iteration"] for r in earlier] == [0, 1, 2]


def test_the_first_stop_reason_wins_and_ends_after_the_iteration():
    class StopAt(Listener):
        def __init__(self, k, reason):
            self.k, self.reason = k, reason

        def on_iteration_end(self, engine, record):
            if record["iteration"] >= self.k:
                engine.stop(self.reason)

    engine = make_engine(QuadraticOracle(), n_outer=10,
                         listeners=[StopAt(1, "first"), StopAt(1, "second")]).run()
    assert engine.stop_reason == "first" and len(engine.records) == 2 and not engine.failed


def test_callbacks_stop_at_the_first_truthy_and_skip_the_rest():
    seen = []
    engine = make_engine(QuadraticOracle(), n_outer=10, listeners=[Callbacks(
        [lambda rec: rec["iteration"] == 2, seen.append])]).run()
    assert [rec["iteration"] for rec in seen] == [0, 1]  # not called once the first stopped
    assert engine.stop_reason == "stopped by a callback after outer iteration 2"
    assert len(engine.records) == 3


def test_timeout_stops_after_the_iteration_that_overran():
    engine = make_engine(QuadraticOracle(), n_outer=10, listeners=[Timeout(0.0)]).run()
    assert len(engine.records) == 1
    assert engine.stop_reason == "timeout of 0.0s reached after outer iteration 0"


def test_project_runs_after_each_step():
    def clamp(lam):
        with torch.no_grad():
            lam[0].clamp_(min=0.95)

    engine = make_engine(QuadraticOracle(), n_outer=3, project=clamp).run()
    assert float(engine.lam[0]) == 0.95


def test_stop_policy_keeps_the_last_finite_lam():
    engine = make_engine(QuadraticOracle(nan_calls={3}), n_outer=5,
                         policy=StopOnNonFinite()).run()
    assert engine.failed and len(engine.records) == 2
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1, 0.1])[-1]
    assert engine.stop_reason.startswith("non-finite loss or hypergradient at outer iteration 2")


def test_stop_policy_catches_a_step_that_makes_lam_non_finite():
    class Huge(QuadraticOracle):
        def __call__(self, lam):
            result = super().__call__(lam)
            if self.calls == 2:
                result.grad = [torch.full_like(lam[0], math.inf)]
            return result

    engine = make_engine(Huge(), n_outer=5).run()  # StopOnNonFinite is the default
    assert engine.failed and len(engine.records) == 1
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1])[-1]
    assert engine.stop_reason == ("lam became non-finite after outer iteration 1; kept the "
                                  "last finite lam")


def shrink_log():
    calls = []

    def shrink(factor):
        calls.append(factor)
        return {"scale": factor ** len(calls)}

    return shrink, calls


def test_rollback_restores_halves_the_step_records_and_retries():
    shrink, calls = shrink_log()
    policy = RollbackOnNonFinite(shrink, warning=UserWarning)
    with pytest.warns(UserWarning, match="rolled the hyperparameters"):
        engine = make_engine(QuadraticOracle(nan_calls={2}), n_outer=3, policy=policy).run()
    # iteration 0 at lr 0.1; iteration 1 fails, is retried at 0.05; iteration 2 at 0.05
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1, 0.05, 0.05])[-1]
    assert engine.optimizer.param_groups[0]["lr"] == 0.05 and calls == [0.5]
    diverged = engine.records[1]
    assert {k: diverged[k] for k in ("iteration", "diverged", "retry", "scale")} == {
        "iteration": 1, "diverged": True, "retry": 1, "scale": 0.5}
    assert math.isnan(diverged["outer_loss"]) and "time_s" in diverged
    assert [r["iteration"] for r in engine.records] == [0, 1, 1, 2]
    assert engine.iteration == 3 and not engine.failed


def test_rollback_counts_consecutive_retries_only():
    shrink, _ = shrink_log()
    policy = RollbackOnNonFinite(shrink, max_retries=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = make_engine(QuadraticOracle(nan_calls={2, 4}), n_outer=4, policy=policy).run()
    assert not engine.failed and engine.iteration == 4
    assert [r["retry"] for r in engine.records if r.get("diverged")] == [1, 1]
    assert len(caught) == 1  # one warning per run, however many rollbacks


def test_rollback_stops_after_max_retries_or_raises():
    shrink, _ = shrink_log()
    nan_from_2 = range(2, 100)
    with pytest.warns(RuntimeWarning):
        engine = make_engine(QuadraticOracle(nan_calls=nan_from_2), n_outer=5,
                             policy=RollbackOnNonFinite(shrink, max_retries=2)).run()
    assert engine.failed and engine.iteration == 1
    assert [r.get("retry") for r in engine.records] == [None, 1, 2, 3]
    assert engine.stop_reason == ("still diverging at outer iteration 1 after 2 retries "
                                  "with halved steps")
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1])[-1]
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match="diverging"):
        make_engine(QuadraticOracle(nan_calls=nan_from_2), n_outer=5, policy=RollbackOnNonFinite(
            shrink, max_retries=0, raise_on_failure=True)).run()


def test_rollback_uses_the_callers_checkpoint_and_restore():
    outside = {"chain": 0}
    log = []

    def checkpoint(engine):
        return float(engine.lam[0]), outside["chain"]

    def restore(engine, snapshot):
        log.append(snapshot)
        with torch.no_grad():
            engine.lam[0].fill_(snapshot[0])
        outside["chain"] = snapshot[1]

    class Chained(QuadraticOracle):
        def __call__(self, lam):
            outside["chain"] += 1
            return super().__call__(lam)

    engine = make_engine(Chained(nan_calls={2}), n_outer=2, policy=RollbackOnNonFinite(
        lambda f: {}, checkpoint, restore, warning=UserWarning))
    with pytest.warns(UserWarning):
        engine.run()
    assert log == [(sgd_values(1.0, [0.1])[-1], 1)]
    assert outside["chain"] == 2  # 3 calls, one rolled back


@pytest.mark.parametrize("policy", ["stop", "rollback"])
def test_ctrl_c_mid_step_puts_lam_back_then_stops_or_raises(policy):
    def make(on_interrupt):
        pol = StopOnNonFinite() if policy == "stop" else RollbackOnNonFinite(lambda f: {})
        log = HookLog()
        return make_engine(QuadraticOracle(interrupt_call=3, corrupt_before_interrupt=True),
                           n_outer=5, policy=pol, listeners=[log], on_interrupt=on_interrupt), log

    after_two = sgd_values(1.0, [0.1, 0.1])[-1]
    engine, log = make("stop")
    engine.run()
    assert engine.stop_reason == "interrupted (KeyboardInterrupt) at outer iteration 2"
    assert float(engine.lam[0]) == after_two and len(engine.records) == 2
    assert log.calls[-1] == "run_end" and not engine.failed

    engine, log = make("raise")
    with pytest.raises(KeyboardInterrupt):
        engine.run()
    assert float(engine.lam[0]) == after_two and log.calls[-1] == "run_end"


def test_ctrl_c_in_a_listener_is_not_rolled_back():
    class Interrupt(Listener):
        def on_iteration_end(self, engine, record):
            if record["iteration"] == 1:
                raise KeyboardInterrupt

    engine = make_engine(QuadraticOracle(), n_outer=5, listeners=[Interrupt()],
                         on_interrupt="stop").run()
    # The step of iteration 1 was complete and counted: it stays.
    assert engine.stop_reason == "interrupted (KeyboardInterrupt) at outer iteration 2"
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1, 0.1])[-1]


def test_warnings_point_at_the_first_frame_outside_the_package():
    with pytest.warns(UserWarning) as caught:
        warn_at_caller("here", UserWarning)
    assert caught[0].filename == __file__


def test_bad_on_interrupt_is_refused():
    with pytest.raises(ValueError, match="on_interrupt"):
        make_engine(QuadraticOracle(), on_interrupt="ignore")


def test_tail_average_is_the_mean_of_the_last_iterates():
    """With n_outer=8 and fraction 0.5 the average is over the iterates after steps 5..8,
    each known exactly from the SGD recurrence."""
    from sgld_tuner.core.engine import TailAverage

    tail = TailAverage(0.5)
    engine = make_engine(QuadraticOracle(), n_outer=8, listeners=[tail]).run()
    values = sgd_values(1.0, [0.1] * 8)
    got = tail.average(engine.lam)[0]
    assert float(got) == pytest.approx(sum(values[4:]) / 4, rel=1e-12)
    assert float(engine.lam[0].detach()) == pytest.approx(values[-1], rel=1e-14)  # untouched


def test_tail_average_skips_rejected_steps_and_is_none_before_the_tail():
    from sgld_tuner.core.engine import TailAverage

    tail = TailAverage(0.25)
    engine = make_engine(QuadraticOracle(nan_calls={2}), n_outer=8, listeners=[tail]).run()
    assert engine.failed and tail.average(engine.lam) is None
    with pytest.raises(ValueError, match="fraction"):
        TailAverage(0.0)


def _adam_engine(listener, n_outer=4):
    lam = [torch.tensor([1.0], dtype=torch.float64, requires_grad=True)]
    optimizer = torch.optim.Adam(lam, lr=0.1)
    return OuterLoop(QuadraticOracle(), lam, optimizer, n_outer=n_outer,
                     policy=RollbackOnNonFinite(lambda f: {}), listeners=[listener],
                     on_interrupt="stop")


def _adam_state(engine):
    state = engine.optimizer.state_dict()["state"][0]
    return int(state["step"]), float(state["exp_avg"][0]), float(state["exp_avg_sq"][0])


def test_ctrl_c_before_the_commit_rolls_back_the_step_the_optimizer_and_the_records():
    """A KeyboardInterrupt in ``on_record`` (after the optimizer step, before the commit)
    leaves lam, Adam's moments and the records exactly as after iteration 1."""
    class Interrupt(Listener):
        def on_record(self, engine, record):
            if record["iteration"] == 2:
                raise KeyboardInterrupt

    reference = _adam_engine(Listener(), n_outer=2).run()
    engine = _adam_engine(Interrupt()).run()
    assert engine.stop_reason == "interrupted (KeyboardInterrupt) at outer iteration 2"
    assert engine.iteration == 2 and [r["iteration"] for r in engine.records] == [0, 1]
    assert float(engine.lam[0]) == float(reference.lam[0])
    assert _adam_state(engine) == _adam_state(reference)


def test_a_sigint_during_the_commit_is_held_until_the_iteration_is_complete():
    """A real SIGINT arriving in ``on_commit`` is delivered after the commit: the
    iteration stays (recorded, counted, ``on_iteration_end`` skipped) and the run stops."""
    import signal

    class Signal(Listener):
        ended = []

        def on_commit(self, engine, record):
            if record["iteration"] == 1:
                # raise_signal delivers to this (the main) thread: os.kill may land on
                # another of the process's threads and reach Python only later.
                signal.raise_signal(signal.SIGINT)
                record["after_signal"] = True  # still runs: the signal is held

        def on_iteration_end(self, engine, record):
            self.ended.append(record["iteration"])

    # Python's own Ctrl-C handler, whatever this process inherited: a job started in the
    # background of a non-interactive shell (as CI may run the suite) has SIGINT ignored.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        engine = make_engine(QuadraticOracle(), n_outer=5, listeners=[Signal()],
                             on_interrupt="stop").run()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert engine.stop_reason == "interrupted (KeyboardInterrupt) at outer iteration 2"
    assert engine.records[-1]["after_signal"] and Signal.ended == [0]
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1, 0.1])[-1]


def test_ctrl_c_while_handling_a_divergence_leaves_the_step_size_and_records_as_before():
    """A KeyboardInterrupt in ``shrink`` (after the rollback and the halved outer step,
    before the divergence row is recorded) undoes the halving: lr, retries and records are
    as after iteration 0, and a rerun of the iteration diverges and shrinks afresh."""
    def shrink(factor):
        raise KeyboardInterrupt

    policy = RollbackOnNonFinite(shrink, warning=UserWarning)
    engine = make_engine(QuadraticOracle(nan_calls={2}), n_outer=3, policy=policy,
                         on_interrupt="stop").run()
    assert engine.stop_reason == "interrupted (KeyboardInterrupt) at outer iteration 1"
    assert engine.optimizer.param_groups[0]["lr"] == 0.1 and policy.retries == 0
    assert [r["iteration"] for r in engine.records] == [0] and not engine.failed
    assert float(engine.lam[0]) == sgd_values(1.0, [0.1])[-1]


def test_lr_warmup_ramps_the_step_and_leaves_the_stored_rate_alone():
    """lr_warmup=4: SGD steps at 0.1 * (1/4, 2/4, 3/4, 1, 1) on grad = lam (closed form),
    the optimizer's stored lr stays 0.1, and a resumed run continues the ramp."""
    lrs = [0.1 * min(1.0, (k + 1) / 4) for k in range(5)]
    engine = make_engine(QuadraticOracle(), n_outer=5, lr_warmup=4).run()
    assert float(engine.lam[0]) == pytest.approx(sgd_values(1.0, lrs)[-1], rel=1e-12)
    assert engine.optimizer.param_groups[0]["lr"] == 0.1
    resumed = make_engine(QuadraticOracle(), n_outer=5, lam0=sgd_values(1.0, lrs[:2])[-1],
                          start=2, lr_warmup=4).run()
    assert float(resumed.lam[0]) == pytest.approx(float(engine.lam[0]), rel=1e-12)
