"""Video clip datasets: decoding, clip sampling, transforms, annotation parsers and demo videos.

Each dataset format (one module: ``kinetics``, ``ucf101``, ``hmdb51``, ``custom``) registers its
parser by name with :func:`register_dataset`; importing this package registers them.

Data flows ``files -> read_frames -> sampling -> transforms -> (clip, label, video_index)``,
with clips ``(C, T, H, W)`` uint8; a DataLoader batches them to ``(N, C, T, H, W)``.
"""
from softpool3d.datasets.annotations import AnnotationError, Annotations, make_index
from softpool3d.datasets import kinetics, ucf101, hmdb51, custom  # noqa: F401,I001  (registers the formats, in this order)
from softpool3d.datasets.builder import build_dataset, load_annotations
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.demo import DEMO_CLASSES, make_demo_dataset, write_video
from softpool3d.datasets.index import LabelList, PathList
from softpool3d.datasets.shard_dataset import ShardDataset, ShardSet, build_shard_dataset
from softpool3d.datasets.shard_index import ShardIndexError
from softpool3d.datasets.registry import DATASET_NAMES, SPLITS, DatasetFormat, dataset_format, list_datasets, register_dataset
from softpool3d.datasets.sampling import NUM_CROPS
from softpool3d.datasets.shared_records import RecordsError
from softpool3d.datasets.video_io import OpenVideo, VideoInfo, VideoReadError, read_frames, video_info
from softpool3d.datasets.workers import freeze_inherited_objects, start_worker_server, worker_context

__all__ = [
    "AnnotationError",
    "Annotations",
    "ClipDataset",
    "DATASET_NAMES",
    "NUM_CROPS",
    "DEMO_CLASSES",
    "DatasetFormat",
    "LabelList",
    "OpenVideo",
    "PathList",
    "RecordsError",
    "SPLITS",
    "ShardDataset",
    "ShardIndexError",
    "ShardSet",
    "VideoInfo",
    "VideoReadError",
    "build_dataset",
    "build_shard_dataset",
    "dataset_format",
    "freeze_inherited_objects",
    "list_datasets",
    "load_annotations",
    "make_demo_dataset",
    "make_index",
    "read_frames",
    "register_dataset",
    "start_worker_server",
    "video_info",
    "worker_context",
    "write_video",
]
