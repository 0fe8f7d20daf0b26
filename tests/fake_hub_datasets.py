"""A Hub dataset served from local rows: the two `datasets` calls data.py makes are replaced, nothing else."""
from __future__ import annotations


def serve_dataset(monkeypatch, splits: dict[str, list[dict]]) -> list[tuple]:
    """Any dataset id reads as `splits` (split name -> rows); streaming=True gives a real IterableDataset.

    Returns the list of calls made, for tests to check (e.g. that streaming=True was asked for).
    """
    import datasets

    calls = []

    def get_dataset_split_names(repo_id, *args, **kwargs):
        calls.append(("get_dataset_split_names", repo_id))
        return list(splits)

    def load_dataset(repo_id, *args, split=None, streaming=False, **kwargs):
        calls.append(("load_dataset", repo_id, split, streaming))
        ds = datasets.Dataset.from_list(splits[split])
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "get_dataset_split_names", get_dataset_split_names)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def hub_unreachable(monkeypatch) -> None:
    """Every `datasets` Hub call fails, as it would offline."""
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("the Hub was contacted")

    monkeypatch.setattr(datasets, "get_dataset_split_names", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
