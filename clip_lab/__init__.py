"""clip_lab: train, evaluate and search CLIP-style image-text retrieval models (COCO, Flickr8k, Flickr30k)."""

__version__ = "0.9.0"  # as pyproject.toml says
__all__ = ["Retriever"]


def __getattr__(name: str):  # noqa: ANN202
    # `from clip_lab import Retriever` imports torch and the model code only when it is asked for: the CLI's
    # `--help` and the jobs that never search stay fast to start
    if name == "Retriever":
        from clip_lab.jobs.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'clip_lab' has no attribute {name!r}")
