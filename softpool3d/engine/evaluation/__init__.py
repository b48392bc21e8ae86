"""Evaluation: multi-view evaluation, the test of a model and ``softpool3d-test``, metrics, and a trained
checkpoint's config and model as the test, prediction and export apply it."""
