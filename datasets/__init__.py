"""Video clip datasets: decoding, clip sampling, transforms, annotation parsers and demo videos.

Data flows ``files -> read_frames -> sampling -> transforms -> (clip, label, video_index)``,
with clips ``(C, T, H, W)`` float; a DataLoader batches them to ``(N, C, T, H, W)``.
"""
from softpool3d.datasets.annotations import AnnotationError, Annotations
from softpool3d.datasets.builder import DATASET_NAMES, build_dataset, load_annotations
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.demo import DEMO_CLASSES, make_demo_dataset, write_video
from softpool3d.datasets.index import LabelList, PathList
from softpool3d.datasets.video_io import OpenVideo, VideoInfo, VideoReadError, read_frames, video_info
from softpool3d.datasets.workers import freeze_inherited_objects

__all__ = [
    "AnnotationError",
    "Annotations",
    "ClipDataset",
    "DATASET_NAMES",
    "DEMO_CLASSES",
    "LabelList",
    "OpenVideo",
    "PathList",
    "VideoInfo",
    "VideoReadError",
    "build_dataset",
    "freeze_inherited_objects",
    "load_annotations",
    "make_demo_dataset",
    "read_frames",
    "video_info",
    "write_video",
]
