"""llm_core.kernels' own threads (issue 13): the GEMVs split their output rows over a small pool of spinning
workers instead of OpenMP's. Every output row is still summed by one thread in one fixed order, so results must be
bit-identical to one thread's, whatever the thread count, however often the workers fall asleep, when a worker is
late (more threads than cores), and in a forked child, which has none of its parent's threads."""

from __future__ import annotations

import os
import time

import pytest
import torch

from llm_core.generation.quantize import Int4Linear, quantize_rows


@pytest.fixture()
def spin(k):  # noqa: ANN001, ANN201 - restores the spin time and the thread count the test changes
    n, us = torch.get_num_threads(), k.set_spin_us(2000)
    k.set_spin_us(us)
    yield k.set_spin_us
    k.set_spin_us(us)
    torch.set_num_threads(n)


def weights(seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """An int8, a Q4_1 and a bf16 weight big enough to be split into several chunks (>= 16k weights each)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(384, 576, generator=g)
    m = Int4Linear.from_weight(w)
    return {"int8_linear": quantize_rows(w), "int4_linear": (m.packed, m.scales_zeros),
            "float_linear": (w.bfloat16(),)}


def outputs(k, ws: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {name: getattr(k, name)(x, *w, None) for name, w in ws.items()}


def one_thread_outputs(k, ws: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ANN001
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return outputs(k, ws, x)
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("spin_us", [0, 2000])  # 0: every worker sleeps after each round and must be woken
@pytest.mark.parametrize("threads", [2, 3, 5])  # more threads than this machine's cores: workers run late
def test_any_thread_count_gives_one_threads_bits(k, spin, spin_us: int, threads: int) -> None:  # noqa: ANN001
    ws = weights()
    x = torch.randn(2, 576)
    want = one_thread_outputs(k, ws, x)
    spin(spin_us)
    torch.set_num_threads(threads)
    for _ in range(30):
        got = outputs(k, ws, x)
        for name in ws:
            assert torch.equal(got[name], want[name]), name


def test_the_thread_count_can_go_up_and_down(k, spin) -> None:  # noqa: ANN001, ARG001
    """The pool grows to the largest count asked for; a smaller count leaves the extra workers out."""
    ws = weights(1)
    x = torch.randn(1, 576)
    want = one_thread_outputs(k, ws, x)
    for threads in (2, 4, 1, 3, 2, 1, 4):
        torch.set_num_threads(threads)
        assert torch.equal(k.int8_linear(x, *ws["int8_linear"], None), want["int8_linear"]), threads
        assert torch.equal(k.int4_linear(x, *ws["int4_linear"], None), want["int4_linear"]), threads


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_workers(k, spin) -> None:  # noqa: ANN001, ARG001
    """A child forked after the pool started has no worker threads: it must start its own, not wait forever."""
    ws = weights(2)
    x = torch.randn(1, 576)
    want = one_thread_outputs(k, ws, x)
    torch.set_num_threads(2)
    assert torch.equal(k.int8_linear(x, *ws["int8_linear"], None), want["int8_linear"])  # the parent's pool runs
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when its results are right
        ok = all(torch.equal(k.int8_linear(x, *ws["int8_linear"], None), want["int8_linear"]) for _ in range(5))
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the kernels for 60 s")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_one_thread_sections_leave_other_threads_alone(k, spin) -> None:  # noqa: ANN001, ARG001
    """fastpath.thread_setter: with the kernels built it changes only the calling thread's count. (With
    torch.set_num_threads a thread whose first parallel op fell inside a one-thread section would keep one thread
    for good: it starts from a process-wide count.)"""
    import threading

    from llm_core.model import fastpath

    torch.set_num_threads(2)
    set_threads = fastpath.thread_setter()
    assert set_threads == k.set_thread_count
    seen = []
    prev = set_threads(1)
    try:
        assert prev == 2 and torch.get_num_threads() == 1
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a new thread, first op here
        t.start()
        t.join(timeout=30)
    finally:
        set_threads(prev)
    assert seen == [2] and torch.get_num_threads() == 2
