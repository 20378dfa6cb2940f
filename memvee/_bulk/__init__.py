"""Re-extraction in bulk through the Anthropic Message Batches API, at half the price.

A bulk run brings one knowledge version up to date: every processed message of the chosen
users that the version does not cover yet is planned into bounded batches, submitted as
one Message Batch (or a few, for very large runs: each within the API's limits on requests
and bytes), polled until it ends, and each result recorded as a KnowledgeReextracted event
of its user.

It survives a crash at any point. The requests of each submitted Message Batch are kept
in a small table (:mod:`projections.bulk_runs`) before the batch is created; a later run
for the same version collects the batches left unfinished before planning anything new.
Each recorded event names its request (``request_id``), and a request already recorded in
the user's log is never recorded again. Rows are deleted once their results are recorded,
but that of a batch that failed whole with server errors: the next run plans its messages
again, and a second such failure in a row sends them through the Messages API by the live
re-extraction's rules (:meth:`fallback.DirectFallback.send_directly`).

The package holds one concept a module: :mod:`.run` (the run), :mod:`.report` (what it
tells), :mod:`.claims` (how runs share users), :mod:`.kept` (the kept rows and their keys),
:mod:`.outcomes` (what the API's answers tell), :mod:`.record` (an answer recorded in its
user's log), :mod:`.probes` (probe Message Batches) and :mod:`.fallback` (the Messages API
fallback).
"""

from memvee._bulk.report import BulkReport
from memvee._bulk.run import BulkReextraction

__all__ = ["BulkReextraction", "BulkReport"]
