"""Applying a trained model to new videos: prediction (the :class:`~softpool3d.engine.inference.predict.Recognizer`),
its inputs, windows, output files and rendered videos, live streams, explanations, export and the exported
runtime."""
