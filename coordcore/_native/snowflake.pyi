"""Native core of coordcore.ids (see that module for the documented API)."""
import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

POLICIES: dict[str, int]
#: Cython's doctest table (autotestdict).
__test__: dict[str, str]

@disjoint_base
class SkewClock:
    """The wall clock shifted by ``offset_ns``: a test clock that can jump backwards."""

    offset_ns: int
    def __init__(self, offset_ns: int = 0) -> None: ...
    def jump(self, ms: float) -> None: ...
    def now_ms(self) -> int: ...

@disjoint_base
class Generator:
    def _configure(
        self,
        *,
        epoch_ms: int,
        unit_ms: int,
        timestamp_bits: int,
        sequence_bits: int,
        timestamp_shift: int,
        sequence_shift: int,
        node_bits: int,
        clock: str,
        max_backward_ms: float,
        max_ahead_ms: float | None,
        clock_source: SkewClock | None,
    ) -> None: ...
    def _set_node_bits(self, node_bits: int) -> None: ...
    def _resume_after_tick(self, tick: int) -> None: ...
    def _set_hwm_tick(self, tick: int) -> None: ...
    def _seal(self) -> int: ...
    @property
    def _sealed(self) -> bool: ...
    @property
    def _forked(self) -> bool: ...
    def _now_tick(self) -> int: ...
    def _on_backwards(self, drift_ms: float) -> None: ...
    def _reserve(self, tick: int) -> None: ...
    def _on_fork(self) -> None: ...
    def _on_revoked(self) -> None: ...
    def _on_exhausted(self) -> None: ...
    def next_id(self) -> int: ...
    @property
    def _counters(self) -> tuple[int, int, int]: ...
    def next_run(self, max_count: int) -> tuple[int, int]: ...
    def _fill(self, out: npt.NDArray[np.int64]) -> None: ...

def decode_columns(
    ids: npt.NDArray[np.int64],
    ts_shift: int,
    dc_shift: int,
    dc_mask: int,
    w_shift: int,
    w_mask: int,
    seq_shift: int,
    seq_mask: int,
    epoch_ms: int,
    unit_ms: int,
    ts_out: npt.NDArray[np.int64],
    dc_out: npt.NDArray[np.int64],
    w_out: npt.NDArray[np.int64],
    seq_out: npt.NDArray[np.int64],
) -> int: ...
