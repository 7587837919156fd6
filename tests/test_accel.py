from terrasynth.accel import make_accelerator


def test_stages_with_different_precisions_share_a_process():
    a = make_accelerator(mixed_precision="bf16")
    assert a.mixed_precision == "bf16"
    b = make_accelerator(mixed_precision="no")  # plain Accelerator() raises here
    assert b.mixed_precision == "no"
    c = make_accelerator()
    assert c.mixed_precision == "no" and c.process_index == 0
