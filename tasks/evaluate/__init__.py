"""The closed loop: fine-tune a retriever on an export (train.py), score base and tuned models on an
evaluation set (evalset.py, metrics.py, retrieval.py), over variants of the training data
(variants.py); the stages are in stage.py."""
