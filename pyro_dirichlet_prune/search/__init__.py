"""The sub-architecture search of Adamczewski & Park (2021), Fig. 3, as a library.

For every seed, every ranking method (the Dirichlet switch posterior means, their mean-guide
variant, and the baselines of ``pruning.baselines``) scores the units of the pre-trained network
once; then for every architecture of a pool the network is pruned to it by keeping the top-ranked
units of each layer, physically shrunk, fine-tuned briefly and tested. The method with the lowest
mean test error over the seeds wins the architecture.

    from pyro_dirichlet_prune.search import SearchConfig, run_search
    report = run_search(SearchConfig(methods=["dirichlet", "l1"], seeds=[0, 1]), "runs/search")

Output folder (``out``):

* ``config.json``: the configuration, written first; a resumed search must match it;
* ``scores/<method>__seed<s>.json``: each method's ranking (score per unit per layer);
* ``records/<method>__seed<s>__<arch>.json``: one record per (method, seed, architecture),
  written atomically (temporary file, fsync, rename) as soon as it is finished, so a kill at any
  moment loses at most the record in progress; ``resume`` skips every finished record;
* ``summary.json`` / ``summary.md``: per-architecture means and winners, wins and ties, the
  paired comparison of every method with the best baseline; ``report.json`` (written last, it
  marks a finished search): configuration, versions, timings and the summary.

Modules: ``pools`` (which architectures), ``config`` (``SearchConfig``), ``records`` (the
output folder), ``stats`` (wins, ties, paired comparisons), ``render`` (Markdown and text),
``runner`` (rankings, records, ``run_search``). The command line (``dirichlet-prune search``)
lives in ``cli``; nothing here parses arguments.
"""
from __future__ import annotations

from .config import (AUGMENT_SHIFT, DEFAULT_FINETUNE_EPOCHS, DIRICHLET_METHODS, FINETUNE_LR, METHODS, SearchConfig,
                     switch_settings)
from .pools import POOLS, lenet5_108, load_pool, parse_pool_text
from .records import (differing_keys, is_unfinished_search, load_records, prepare_folder, read_json, record_key,
                      write_json_durable)
from .render import describe, load_summary, summary_markdown, write_summary
from .runner import method_scores, run_record, run_search
from .stats import TIE_TOL, paired_comparison, summarize, t_interval

__all__ = [
    "AUGMENT_SHIFT", "DEFAULT_FINETUNE_EPOCHS", "DIRICHLET_METHODS", "FINETUNE_LR", "METHODS", "POOLS", "TIE_TOL",
    "SearchConfig", "describe", "differing_keys", "is_unfinished_search", "lenet5_108", "load_pool",
    "load_records", "load_summary", "method_scores", "paired_comparison", "parse_pool_text", "prepare_folder",
    "read_json", "record_key", "run_record", "run_search", "summarize", "summary_markdown",
    "switch_settings", "t_interval", "write_json_durable", "write_summary",
]
