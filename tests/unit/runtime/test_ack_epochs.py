"""The seek/revoke bookkeeping of the batching consumer (``faust_patches.AckEpochs``).

The stuck-offset fault of issue 12, as the worker's trace showed it: recovery resumed the
stream partitions and awaited the seek to the committed offsets (36) while the fetch loop ran;
offsets 36-40 fetched from the old position were delivered, their acks of 36-38 were recorded
and then wiped by the seek's reset, and the re-fetched 36-39 were dropped as already read.
Committed 36, acked 39-41, nothing fetching 36 again: lag for good.
"""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.runtime.faust_patches import AckEpochs

OPS = TP("t.identity.ops", 2)
RAW = TP("t.touchpoints.raw", 2)


def _message(offset: int) -> SimpleNamespace:
    return SimpleNamespace(tp=OPS, offset=offset)


def _sought(epochs: AckEpochs, *tps: TP) -> None:
    epochs.seek_started()
    epochs.seek_ended(set(tps))


def test_a_batch_fetched_before_a_seek_is_not_delivered_during_or_after_it() -> None:
    epochs = AckEpochs()
    _sought(epochs, OPS)
    fetched_in = epochs.epoch
    assert epochs.deliverable(fetched_in)
    epochs.seek_started()  # recovery's seek, while the batch is being delivered
    assert not epochs.deliverable(fetched_in)
    epochs.seek_ended({OPS})
    assert not epochs.deliverable(fetched_in)
    assert epochs.deliverable(epochs.epoch)  # a fetch begun after the seek


def test_acks_count_only_for_messages_delivered_since_the_last_seek() -> None:
    epochs = AckEpochs()
    _sought(epochs, OPS)
    before = [_message(o) for o in (36, 37, 38)]
    for m in before:
        epochs.tag(m, epochs.epoch)
    epochs.seek_started()
    assert not any(epochs.counts(m, OPS) for m in before)  # not while the seek runs
    epochs.seek_ended({OPS})
    assert not any(epochs.counts(m, OPS) for m in before)  # their copies come again
    again = _message(36)
    epochs.tag(again, epochs.epoch)
    assert epochs.counts(again, OPS)
    assert not epochs.counts(_message(36), OPS)  # never delivered: no epoch


def test_no_ack_counts_between_a_revoke_and_the_next_seek() -> None:
    epochs = AckEpochs()
    _sought(epochs, OPS, RAW)
    finishing = _message(10)
    epochs.tag(finishing, epochs.epoch)
    epochs.revoked({OPS, RAW})
    assert not epochs.counts(finishing, OPS)  # a batch that finishes during the rebalance
    early = _message(11)
    epochs.tag(early, epochs.epoch)  # delivered before the new assignment's seek
    assert not epochs.counts(early, OPS)
    _sought(epochs, RAW)
    late = _message(11)
    epochs.tag(late, epochs.epoch)
    assert not epochs.counts(late, OPS)  # OPS was not sought again: no longer ours
    assert epochs.counts(late, RAW)


def test_a_failed_seek_leaves_nothing_counting() -> None:
    epochs = AckEpochs()
    _sought(epochs, OPS)
    epochs.revoked({OPS})
    epochs.seek_started()
    epochs.seek_ended(None)  # cancelled by the next rebalance
    m = _message(5)
    epochs.tag(m, epochs.epoch)
    assert not epochs.seeking
    assert not epochs.counts(m, OPS)


def test_a_failed_seek_asks_for_another_and_a_successful_one_clears_it() -> None:
    epochs = AckEpochs()
    epochs.seek_started()
    epochs.seek_ended(None)
    assert epochs.needs_seek
    _sought(epochs, OPS)
    assert not epochs.needs_seek
