"""Model, data and task specs: the one resolver behind recipes, the CLI, `auto` and `bench`.

A model spec is a built-in name (`mmcompress models`), `hf:<folder or hub id>`, `st:<folder or
id>`, `py:<module or file.py>:<factory>` (the factory returns an `nn.Module`, or `(module,
adapter)`), or a run folder (its compressed model). A data spec is a built-in dataset name or
`py:...:<factory>` returning `(train, test)`, `(train, test, task)` or a dict with those keys. A
task spec is `classification`, `agreement` (top-1 agreement with the float model: no labels
needed), `cosine` (output cosine to the float model), `wer` (word error rate of a speech
recognizer on recordings with transcripts, e.g. `real-speech`) or `py:...:<name>` naming a `Task`, an
evaluation function `fn(model) -> metrics` the user already has (WER, retrieval, ...), or a
factory without arguments returning either.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcompress.audio.speech_task import SpeechTask
from mmcompress.core.batches import check_model_runs
from mmcompress.data.registry import DATASETS, load_dataset
from mmcompress.errors import ConfigError, MMCompressError, ModelError, unknown_name
from mmcompress.models.adapter import Adapter, attach_adapter
from mmcompress.models.hf.loading import MINILM_NAMES
from mmcompress.models.zoo import (
    MODELS,
    build_model,
    get_spec,
    holds_speech,
    holds_text,
    list_pretrained,
    load_model,
    task_for,
)
from mmcompress.recipe.builtin_passes import first_samples
from mmcompress.recipe.runner import SPEC_ATTR, load_run, read_record
from mmcompress.train.config import TrainConfig
from mmcompress.train.reference_tasks import AgreementTask, EvaluationTask, reference_task
from mmcompress.train.tasks import ClassificationTask, Task

MODEL_FORMS = (
    "a built-in name (see 'mmcompress models'), 'hf:<folder or hub id>', 'st:<folder or id>', "
    "'py:<module or file.py>:<factory>' or a run folder"
)
OTHER_FORMS = "'hf:<folder or hub id>', 'st:<folder or id>', 'py:<module or file.py>:<factory>' or a run folder"
TASK_NAMES = ("classification", "agreement", "cosine", "wer")


@dataclass
class Workload:
    """A model with the data and the task it is compressed and measured on.

    Attributes:
        model: the starting model (a built-in's trained baseline, a checkpoint as published, ...).
        name: what reports call it (the spec, or the class name of a Python object).
        spec: the model spec (None for a Python object given directly): a run folder records it.
        train, test: datasets the task can index (None when no data was given).
        task: batches, loss and metrics.
        freeze: parameter prefixes that stay frozen when fine-tuning (a built-in's own setting).
        train_config: the built-in's training config (learning rate, batch size of fine-tuning).
    """

    model: nn.Module
    name: str
    spec: str | None
    train: Any = None
    test: Any = None
    task: Task | None = None
    freeze: tuple[str, ...] = ()
    train_config: TrainConfig | None = None
    builtin: bool = field(default=False)

    def require_data(self, what: str) -> None:
        """Fail before any work when the workload has no data."""
        if self.train is None or self.test is None:
            raise ConfigError(
                f"{what} needs data: {self.name} comes with no dataset (only the built-in task models "
                "do), so give a data spec (--data: a built-in dataset name or 'py:<module or file.py>:<factory>' "
                "returning (train, test[, task]))"
            )


def is_run_folder(spec: str | Path) -> bool:
    """True for a folder holding a run's record.json."""
    path = Path(spec)
    return path.is_dir() and (path / "record.json").is_file()


def model_name(spec: str | nn.Module | None) -> str:
    """How reports name a model: its spec, or the class name of a Python object."""
    if spec is None:
        return "model"
    if isinstance(spec, nn.Module):
        return getattr(spec, SPEC_ATTR, None) or type(spec).__name__
    return str(spec)


def load_model_spec(
    spec: str | Path | nn.Module,
    *,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    train: TrainConfig | None = None,
    train_limit: int | None = None,
    progress: bool = True,
    adapter: Adapter | str | Path | dict | None = None,
) -> nn.Module:
    """The model a spec names (see the module docstring); `pretrained=False` gives a built-in's
    untrained architecture (a run's weights then replace it).

    Example:
        >>> model = load_model_spec("py:my_models.py:build")      # my_models.build() -> nn.Module
        >>> model = load_model_spec("hf:whisper-tiny.en")
        >>> compressed = load_model_spec("runs/quantize")         # a run's compressed model
    """
    if isinstance(spec, nn.Module):
        model = spec
    elif is_run_folder(spec):
        model = load_run_folder(spec, cache_dir=cache_dir)
    else:
        text = str(spec)
        if text.startswith("py:"):
            model = _model_from_factory(text)
        elif text.startswith(("hf:", "st:")) or text.lower() in MINILM_NAMES:
            model = load_model(text)
        elif text in MODELS:
            if pretrained:
                model = load_model(text, cache_dir=cache_dir, data_dir=data_dir, train=train,
                                   train_limit=train_limit, progress=progress)  # fmt: skip
            else:
                model = build_model(text)
        else:
            check_model_spec(text)
            raise ModelError(f"cannot load model {text!r}")  # unreachable: check_model_spec raised
        object.__setattr__(model, SPEC_ATTR, text)
    if adapter is not None:
        attach_adapter(model, adapter)
    return model


def check_model_spec(spec: str) -> None:
    """Raise the error `load_model_spec` would for a malformed spec, without loading anything.

    Example:
        >>> check_model_spec("digits-cnn")
    """
    text = str(spec)
    if text in MODELS or text.startswith(("hf:", "st:")) or text.lower() in MINILM_NAMES or is_run_folder(text):
        return
    if text.startswith("py:"):
        target, sep, attr = text[3:].rpartition(":")
        if not sep or not target or not attr:
            raise ConfigError(f"model spec {text!r} must read py:<module or file.py>:<name>")
        if (target.endswith(".py") or "/" in target) and not Path(target).expanduser().is_file():
            raise ConfigError(f"{text!r}: file {target} does not exist")
        return
    if Path(text).is_dir():
        raise ModelError(f"{text!r} is a folder without record.json, not a run; a model spec is {MODEL_FORMS}")
    valid = [*MODELS, *list_pretrained()]  # built-in and packaged pretrained (minilm, hf:whisper-tiny.en, ...)
    raise ModelError(f"{unknown_name('model', text, valid)}; or a spec: {OTHER_FORMS}")


def load_run_folder(run_dir: str | Path, *, cache_dir: str | Path | None = None) -> nn.Module:
    """A run's compressed model, rebuilt from the model spec its record.json names.

    Example:
        >>> model = load_run_folder("runs/quantize")
    """
    record = read_record(run_dir)
    spec = record.get("model_spec", record.get("recipe", {}).get("model"))
    if not spec:
        raise ModelError(
            f"run {run_dir} was made from a Python model object, so its record names no model spec; "
            "rebuild the model yourself and call mmcompress.recipe.runner.load_run(run_dir, model)"
        )
    base = load_model_spec(spec, pretrained=False, cache_dir=cache_dir, progress=False)
    adapter = record.get("adapter")
    if adapter:
        attach_adapter(base, adapter)
    model = load_run(run_dir, base)
    object.__setattr__(model, SPEC_ATTR, str(spec))
    return model


def resolve_workload(
    model: str | Path | nn.Module,
    data: str | tuple | dict | None = None,
    task: str | Task | None = None,
    *,
    adapter: Adapter | str | Path | dict | None = None,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    train: TrainConfig | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
    pretrained: bool = True,
) -> Workload:
    """Resolve a model, its data and its task from specs (or objects) in one call.

    A built-in model brings its own dataset and task; any other model takes `data` (a built-in
    dataset name, a `py:` factory or a `(train, test)` pair) and `task` (default: the data
    factory's task, else classification).

    Example:
        >>> w = resolve_workload("py:my_models.py:build", "py:my_data.py:load", "agreement")
        >>> w.task.evaluate(w.model, w.test)
    """
    builtin = isinstance(model, str) and model in MODELS
    net = load_model_spec(model, pretrained=pretrained, cache_dir=cache_dir, data_dir=data_dir, train=train,
                          train_limit=train_limit, progress=progress, adapter=adapter)  # fmt: skip
    spec = None if isinstance(model, nn.Module) else str(model)
    if spec is not None and is_run_folder(spec):
        spec = getattr(net, SPEC_ATTR, spec)
        builtin = spec in MODELS
    data_spec = data if data is not None else (get_spec(spec).dataset if builtin else None)
    train_ds, test_ds, data_task = load_data_spec(data_spec, data_dir=data_dir, train_limit=train_limit,
                                                  test_limit=test_limit)  # fmt: skip
    work = Workload(net, model_name(model if spec is None else spec), spec, train_ds, test_ds, None, builtin=builtin)
    if builtin:
        work.freeze, work.train_config = tuple(get_spec(spec).train.freeze), get_spec(spec).train
    work.task = resolve_task(task, net, train_ds if train_ds is not None else test_ds, data_task)
    if not builtin and test_ds is not None and data is not None:
        _check_fits(work, data)
    if test_limit is not None and isinstance(work.task, EvaluationTask):
        warnings.warn(
            f"test_limit {test_limit} (--test-limit) limits the test data, but the task is an evaluation "
            "function that reads data of its own: it scores what it chooses",
            UserWarning,
            stacklevel=2,
        )
    return work


def _check_fits(work: Workload, data: Any) -> None:
    """The model runs on two test items of the data (`check_model_runs`): data made for another
    model is one line naming both, before any stage."""
    if not hasattr(work.test, "__len__") or len(work.test) == 0:
        return
    try:
        inputs, _ = work.task.batch(work.test, torch.arange(min(2, len(work.test))))
    except Exception:  # noqa: BLE001 - a task that batches otherwise reports its own problem at the first stage
        return
    check_model_runs(work.model, inputs, repr(data) if isinstance(data, str) else "the data")


def load_data_spec(
    spec: str | tuple | list | dict | None,
    *,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[Any, Any, Any]:
    """(train, test, task or None) from a built-in dataset name, a `py:` factory or a pair.

    Example:
        >>> train, test, task = load_data_spec("digits", test_limit=100)
    """
    if spec is None:
        return None, None, None
    if isinstance(spec, str) and not spec.startswith("py:"):
        if spec not in DATASETS:
            raise ConfigError(
                f"unknown dataset {spec!r}; a data spec is a built-in dataset ({', '.join(DATASETS)}) "
                "or 'py:<module or file.py>:<factory>'"
            )
        train = load_dataset(spec, "train", data_dir=data_dir, limit=train_limit)
        return train, load_dataset(spec, "test", data_dir=data_dir, limit=test_limit), None
    value = _call_factory(spec, "data") if isinstance(spec, str) else spec
    if isinstance(value, dict):
        unknown = set(value) - {"train", "test", "task"}
        if unknown or "test" not in value:
            raise ConfigError(f"the data factory {spec!r} must return train, test (and task); got {sorted(value)}")
        train, test, task = value.get("train"), value["test"], value.get("task")
    elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
        train, test, task = (*value, None)[:3]
    else:
        raise ConfigError(
            f"the data factory {spec!r} must return (train, test), (train, test, task) or a dict; "
            f"got {type(value).__name__}"
        )
    for split, ds in (("train", train), ("test", test)):
        if ds is not None and not hasattr(ds, "__len__"):
            raise ConfigError(f"the {split} data of {spec!r} ({type(ds).__name__}) has no len(): give a dataset")
    if test is not None and len(test) == 0:
        raise ConfigError(f"the test data of {spec!r} is empty")
    train = train if train is not None else test
    return _limited(train, train_limit), _limited(test, test_limit), task


def resolve_task(spec: str | Task | Any, model: nn.Module, dataset: Any, data_task: Any = None) -> Task:
    """A Task from a spec: an object, a name ('classification', 'agreement', 'cosine'), a `py:` factory
    (a Task, or an evaluation function `model -> dict | float`), else the data's or the model's own.

    Example:
        >>> resolve_task("agreement", model, test).primary_metric
        'agreement'
    """
    if spec is None:
        spec = data_task
    if spec is None:
        return task_for(model, dataset) if dataset is not None else ClassificationTask()
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str) and not spec.startswith("py:"):
        if spec == "classification":
            return ClassificationTask()
        if spec == "cosine" and dataset is not None and holds_text(dataset):  # sentences: tokenized by the model's
            return task_for(model, dataset)  # own tokenizer, cosine to a copy of the model as it is now
        if spec in ("agreement", "cosine"):
            return reference_task(spec, copy.deepcopy(model).eval())
        if spec == "wer":
            if dataset is not None and not holds_speech(dataset):
                raise ConfigError("task 'wer' needs recordings with transcripts: --data real-speech, or a py: "
                                  "data factory returning mmcompress.audio.speech.Utterance items")  # fmt: skip
            return SpeechTask(copy.deepcopy(model).eval())
        raise ConfigError(f"unknown task {spec!r}; a task spec is one of {', '.join(TASK_NAMES)} or 'py:...:<factory>'")
    value = _task_object(spec) if isinstance(spec, str) else spec
    if isinstance(value, Task):
        return value
    if callable(value):
        return EvaluationTask(value, AgreementTask(copy.deepcopy(model).eval()))
    raise ConfigError(
        f"the task factory {spec!r} must return a Task or a function model -> metrics; got {type(value).__name__}"
    )


def _task_object(spec: str) -> Any:
    """What `py:...:name` names for a task: a Task, an evaluation function `fn(model)` (used as is),
    or a factory without arguments returning either."""
    named = load_py_object(spec, "task")
    if isinstance(named, Task) or (isinstance(named, type) and issubclass(named, Task)):
        return named() if isinstance(named, type) else named
    if callable(named) and _required_args(named) == 1:
        return named
    return _call_factory(spec, "task")


def _required_args(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _limited(ds: Any, limit: int | None) -> Any:
    return ds if ds is None or limit is None else first_samples(ds, limit)


def _model_from_factory(spec: str) -> nn.Module:
    value = _call_factory(spec, "model")
    adapter = None
    if isinstance(value, dict):
        value, adapter = value.get("model"), value.get("adapter")
    elif isinstance(value, tuple) and len(value) == 2:
        value, adapter = value
    if not isinstance(value, nn.Module):
        raise ModelError(
            f"the model factory {spec!r} must return an nn.Module (or (module, adapter)); got {type(value).__name__}"
        )
    if adapter is not None:
        attach_adapter(value, adapter)
    return value


def _call_factory(spec: str, what: str) -> Any:
    factory = load_py_object(spec, what)
    if not callable(factory):
        raise ConfigError(f"{spec!r} names a {type(factory).__name__}, not a function to call")
    try:
        return factory()
    except MMCompressError:
        raise
    except Exception as err:
        raise ConfigError(f"the {what} factory {spec!r} raised {type(err).__name__}: {err}") from err


def load_py_object(spec: str, what: str = "object") -> Any:
    """The object `py:<module or file.py>:<name>` names (a file is imported from its path).

    Example:
        >>> load_py_object("py:my_models.py:build", "model")
    """
    target, sep, attr = spec[3:].rpartition(":")
    if not spec.startswith("py:") or not sep or not target or not attr:
        raise ConfigError(f"{what} spec {spec!r} must read py:<module or file.py>:<name>")
    if target.endswith(".py") or "/" in target:
        module = _import_file(Path(target), spec)
    else:
        _search_path(Path.cwd())  # `py:my_models:build` from the folder it was typed in, as `python -m` does
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise ConfigError(f"{what} spec {spec!r}: module {target!r} cannot be imported ({err})") from None
        except Exception as err:
            raise ConfigError(f"{what} spec {spec!r}: importing {target!r} raised {type(err).__name__}: {err}") from err
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
        raise ConfigError(f"{what} spec {spec!r}: {target} has no {attr!r} (it defines: {', '.join(names[:12])})")
    return getattr(module, attr)


def _import_file(path: Path, spec: str) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{spec!r}: file {path} does not exist")
    name = f"mmcompress_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    _search_path(path.parent)  # the file imports its neighbours, as when Python runs it as a script
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # classes defined there pickle by this name (worker processes re-import it)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(f"{spec!r}: importing {path} raised {type(err).__name__}: {err}") from err
    return module


def _search_path(folder: Path) -> None:
    """Let user code in `folder` import its sibling modules (appended: never shadows installed packages)."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
