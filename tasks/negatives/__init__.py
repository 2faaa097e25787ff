"""Hard negative mining: candidates from the indexes, composable policies, every kept negative
annotated with its rank, score, judge score and the policies that kept it.

The semantics follow `sentence_transformers.util.mine_hard_negatives`, so the same parameters
give the same negatives: plan.py (window and depth), retrieve.py (candidates), policies.py
(margins, judge filter, modality classes, sampling), mine.py (the batched job), inputs.py
(queries and positives), refresh.py (which queries a refresh must re-mine), stage.py.
"""
