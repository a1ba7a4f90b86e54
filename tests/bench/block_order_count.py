#!/usr/bin/env python3
"""A count, not a measurement: how long the causal attention kernels' blocks keep the SMs busy
under a greedy scheduler (each free slot takes the next block in index order), in units of one
64x64 tile pair, for the two block orders of kernels/attention_mma.cu: the tile on grid x
(longest first within each (head, batch) row only) and the tile slowest (longest first over the
whole grid). It assumes every tile pair costs the same and blocks start strictly in index order.

    python3 tests/bench/block_order_count.py      (the figures quoted in docs/BENCHMARKS.md)
"""
import heapq


def makespan(blocks, slots):
    ends = [0] * slots
    for work in blocks:
        heapq.heappush(ends, heapq.heappop(ends) + work)
    return max(ends)


def main():
    tiles = 16  # T = 1024 in 64-row tiles
    # (name, batch, query heads, KV heads, blocks per SM), SMs of an H100
    for name, batch, hq, hkv, per_sm in (("mistral-7b 4x1024, D=128", 4, 32, 8, 2),
                                         ("llama-1b 8x1024, D=64", 8, 32, 8, 3)):
        slots = 132 * per_sm
        group = hq // hkv
        # dk, dv per query head: key tile i sees tiles - i query tiles (forward, dq: the same sizes)
        row = [tiles - i for _ in range(batch * hq) for i in range(tiles)]
        grid = sorted(row, reverse=True)
        per_group_row = [group * (tiles - i) for _ in range(batch * hkv) for i in range(tiles)]
        per_group_grid = sorted(per_group_row, reverse=True)
        ideal = sum(row) / slots
        print(f"{name}: {slots} slots, ideal {ideal:.1f} tile pairs per slot")
        print(f"  per query head: row order {makespan(row, slots)}, "
              f"longest first over the grid {makespan(grid, slots)}")
        print(f"  per KV head:    row order {makespan(per_group_row, slots)}, "
              f"longest first over the grid {makespan(per_group_grid, slots)}")


if __name__ == "__main__":
    main()
