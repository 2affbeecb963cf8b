"""``experiments/bench/layer_numerics.py`` (the GPU check of QuantLinear's autograd contract and
SR streams): its device-independent checks pass on the CPU, and a failing check is reported,
not raised."""

import experiments.bench.layer_numerics as bench


def test_checks_pass_on_the_cpu():
    res = bench.checks("cpu")
    assert len(res) == 12 and all(res.values()), [k for k, v in res.items() if not v]


def test_a_check_that_raises_is_a_failed_row():
    def broken(device):
        raise ValueError("no kernel")

    assert bench._run(broken, "cpu") == {"broken raised ValueError('no kernel')": False}
