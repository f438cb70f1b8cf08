"""Host-sync budget of the hot paths, counted on CPU by call site (tests/_syncs.py)."""

import pytest
import torch

from _syncs import count_syncs


# --- the counter itself ---------------------------------------------------------------------------
def test_counter_counts_each_kind_of_sync_at_its_call_site():
    t, v = torch.tensor(2.0), torch.arange(4.0)
    with count_syncs() as syncs:
        float(t)
        int(t)
        t.item()
        v.tolist()
        if (v > 1).any():
            pass
        torch.equal(v, v)
        v.nonzero()
        v[v > 1]
        [0, 1, 2][t.long()]
    assert syncs.total == 9, syncs.report()
    assert len(syncs.by_site) == 9  # one line each: the site names this file and line
    assert all("test_syncs.py:" in s for s in syncs.by_site)
    kinds = {k for c in syncs.kinds.values() for k in c}
    assert kinds == {"__float__", "__int__", "item", "tolist", "__bool__", "equal", "nonzero",
                     "__getitem__[mask]", "__index__"}


def test_counter_ignores_device_side_work_and_reports_where_a_budget_fails():
    t = torch.randn(5)
    with count_syncs() as syncs:
        u = torch.maximum(t, torch.zeros(())).clamp(max=1.0) * 2
        torch.where(u > 0, u, -u)
        u[1:3] += 1
    assert syncs.total == 0, syncs.report()
    with count_syncs() as syncs:
        for _ in range(3):
            float(t.sum())  # a deliberate sync, three times on one line
    assert syncs.total == 3 and len(syncs.by_site) == 1
    with pytest.raises(AssertionError, match=r"3 host syncs, budget 1[\s\S]*test_syncs.py:\d+"):
        syncs.assert_at_most(1, "the loop")
