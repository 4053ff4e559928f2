"""configure_cpu: the settings it promises are in force, and tensors keep their values under them."""

import numpy as np
import paddle

from paddle_asr.cpu_settings import configure_cpu, keep_freed_memory_for_reuse


def test_configure_cpu_sets_threads_contiguous_transposes_and_malloc_reuse():
    assert configure_cpu(2) == 2
    assert paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"] is False
    assert keep_freed_memory_for_reuse() is True  # glibc here: every mallopt call was accepted
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    t = paddle.to_tensor(x)
    np.testing.assert_array_equal(t.transpose([0, 2, 1, 3]).reshape([2, 4, 15]).numpy(),
                                  x.transpose(0, 2, 1, 3).reshape(2, 4, 15))
    # A slice is a copy now: writing into it leaves the source alone.
    part = t[:, 1]
    part.add_(paddle.ones_like(part))
    np.testing.assert_array_equal(t.numpy(), x)
