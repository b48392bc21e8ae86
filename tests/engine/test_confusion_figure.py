"""The TensorBoard confusion matrix: class names drawn, a colour scale, the most-confused classes'
sub-matrix for many classes."""
import numpy as np
import torch

from softpool3d.engine.training.confusion_figure import MAX_LABELLED, confusion_figure, most_confused


def test_most_confused_classes_are_those_with_the_most_off_diagonal_counts():
    confusion = torch.diag(torch.full((60,), 50))
    planted = [3, 17, 18, 41, 59]
    for a, b in zip(planted, planted[1:] + planted[:1]):
        confusion[a, b] += 7
    assert most_confused(confusion, 5) == planted
    assert set(most_confused(confusion, 8)) >= set(planted)


def pixels(image):
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(int)


def test_figure_has_the_class_names_and_a_colour_scale():
    confusion = torch.tensor([[9, 1, 0], [2, 5, 3], [0, 0, 10]])
    image = confusion_figure(confusion, ["walk", "run", "jump"])
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    renamed = confusion_figure(confusion, ["walk", "run", "a much longer class name"])
    assert renamed.shape != image.shape or not torch.equal(renamed, image)
    colours = {tuple(p) for p in pixels(image).reshape(-1, 3)}
    assert (8, 48, 107) in colours and (255, 255, 255) in colours  # the colour bar's two ends
    assert not torch.equal(confusion_figure(confusion * 2, ["walk", "run", "jump"]), image)  # counts drawn


def test_many_classes_show_only_the_most_confused_sub_matrix():
    confusion = torch.diag(torch.full((200,), 20))
    confusion[5, 6] = confusion[150, 7] = 4
    many = confusion_figure(confusion, [f"class {k}" for k in range(200)])
    few = confusion_figure(confusion[:MAX_LABELLED, :MAX_LABELLED], [f"class {k}" for k in range(MAX_LABELLED)])
    assert abs(many.shape[1] - few.shape[1]) < 40 and abs(many.shape[2] - few.shape[2]) < 80
    assert np.isfinite(many.numpy()).all()
