"""Training: the loop (:mod:`~softpool3d.engine.training.train`), its optimizer and schedule, the training
state a checkpoint holds, non-finite steps, the start-up summary, TensorBoard, and the switches."""
