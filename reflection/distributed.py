"""Several processes (`accelerate launch --num_processes N experiments/run.py ...`): rollouts are sharded across
them and gathered, training runs data-parallel, and only the main process writes the run directory.

One plain `python` process is the default and the same code path: a world of one.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

T = TypeVar("T")
R = TypeVar("R")


def state() -> PartialState:
    """This process's place in the launch; the first call sets it up (gloo between CPU processes)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return state().is_main_process


def world_size() -> int:
    return state().num_processes


def barrier() -> None:
    """Wait until every process gets here (e.g. until the main process has written what the others read)."""
    state().wait_for_everyone()


def main_view(value: T) -> T:
    """The main process's `value`, on every process. For decisions that must agree because collectives follow
    (whether a stage runs): each process reading the run directory itself can race with the main process's
    write (one sees the stage done and skips it, the other runs it, and both wait forever)."""
    st = state()
    if st.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def sharded(items: list[T], fn: Callable[[list[T]], list[R]]) -> list[R]:
    """`fn` over this process's contiguous share of `items`; every process gets all the results, in the order
    of `items` (`fn` must return its results in the order of its share)."""
    st = state()
    if st.num_processes == 1:
        return fn(items)
    with st.split_between_processes(items) as mine:
        return gather_object(fn(list(mine)))
