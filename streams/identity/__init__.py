"""Streaming identity resolution: the pure, Faust-free core (``streams.identity.graph``).

Identifiers seen together on an event belong to one customer; customers are the
connected components of that graph. The graph is *partitioned*: an identifier's
state lives on ``partition_for("kind:value", n)``, a customer's on
``partition_for(customer_id, n)``, and the two talk only by **ops** sent over one
op topic. Every handler reads and writes the state of exactly one key, the op's
``routing_key``, so a partition's state is a table shard and no process needs to
see everything.

Customer ids sort by age (``"c" + created_ms as 11 hex digits + sha1(anchor)[:8]``),
so "the oldest survives" is ``min(a, b)``, computable anywhere. The protocol:

    LINK(i0, i1..)   at i0: label L (new customer if unset), Resolved(event, L), JOIN(j, L) each j
    JOIN(j, X)       at j: unset -> X (+ADD_MEMBER); other label Y -> MERGE(max, min) or quarantine
    MERGE(a, s)      at a: absorbed -> re-issue against a's survivor; locked -> wait; else lock,
                     PROPOSE(s, a, a's members)
    PROPOSE(s, a)    at s: absorbed -> forward to the survivor; locked -> wait; else check limits:
                     accept (union, Merge output, ABSORBED) or refuse (Refusal, UNLOCK)
    ABSORBED(a, s)   at a: absorbed_into = s, RELABEL every member, replay the waiting ops
    RELABEL(m, to)   at m: label = to if to is older (relabels commute)

Merges only ever go from a younger id to an older one, and a locked customer only
waits for a strictly older one, so no cycle of waits exists. A customer being
absorbed defers everything that would change its members, so the members it proposed
are exactly the members that move. Handlers are idempotent: applying any op twice
leaves the state as applying it once (proposals carry a lock number).

A lock number names its proposal, not only its place in the customer's sequence: it is
a digest of the previous number, the survivor asked, the members and absorbed ids
proposed and the evidence (the value it came through, the event): a survivor refuses a
merge through a value found shared (``shared_via``) and accepts the same members through
another. A crash that loses state writes rolls the customer back to an earlier
number while the proposals it already sent stay in flight; a plain counter would give
the next, different proposal the same number, and the late UNLOCK (or ABSORBED) of
the forgotten one would release (or settle) the new lock, leaving the customer live
while its survivor also holds its members. Replies to another proposal never match.

Delivery contract (what the Faust wiring must give): ops on a partition are handled
in order, at least once; a batch's ops are produced (acknowledged) *before* its state
writes, and offsets are committed after both. Then a crash either replays ops against
the old state (deterministic ids make the replay produce the same ops) or against the
new state (idempotent handlers). Outputs may repeat; each has a deterministic ``id``.

Erasure: the customer and every customer it absorbed become tombstones, each of its
identifiers becomes a tombstone ``IdState(erased=True)``. A tombstoned identifier is
never linked again: on a later event it is dropped from the link set like a
quarantined one (the event goes to the remaining identifiers, or to nobody), and ops
still in flight towards an erased customer are dropped or erase what they carry.
Handlers only get/put by key (never scan), so the state store may hash its keys.

Split (best effort): the identifier moves to a fresh customer of its own and is removed
from the old one. A replayed or stale JOIN towards its old customer is ignored, but a
new event linking it to that customer's identifiers merges them again (evidence wins)
unless the split also quarantined it; a relabel in flight during the split can also
move it back.

Merge cap: an identifier counts the distinct customers it was asked to join that came
with an account (the JOIN's event carried a strong id, ``STRONG_KINDS``), and all of
them; above the cap for its kind (or ``WEAK_CAP_FACTOR`` x the cap in all) it becomes a
household. Merges it requested before that stand.

Households (weak vs strong identifiers): a merge through a weak identifier refused by a
strong kind's limit proves two accounts glued through one value. ``SHARED`` finds it:
the weak anchor of the JOIN that asked for the merge, else the identifier it came
through, unless a weak value put that one in its customer (``IdState.via``: the blame
moves on, at most ``_MAX_BLAME_HOPS``). The shared value is quarantined and moved to a
customer of its own, ``h`` + ... (one id per identifier, whichever verdict finds it),
that claims no person (``is_household``); a relabel
that reaches it makes the sender drop it (``RemoveMemberOp.keep``). Its old customer
then undoes what joined the person through it (``UNDO_THROUGH``: the identifiers first
labelled on an event anchored at it, and the side of a merge asked on such an event, each
split off unless a strong id vouched for it; ``IdentityNode(undo_through=False)`` turns
that off). A split is a replay when the identifier already had the customer it
makes (its label or ``former``), and an undo never moves a quarantined identifier: a
redelivered undo would otherwise pull a value found shared since out of its household.
"""
