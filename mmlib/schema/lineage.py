"""The one walk along `derived_from` links: from a model to its base, its base's base, ... never looping forever."""

from typing import Callable, Optional, TypeVar

from mmlib.errors import IntegrityError, MissingBaseError, ModelNotFoundError

Record = TypeVar("Record")


def walk_lineage(model_id: str, load: Callable[[str], Record], base_of: Callable[[Record], Optional[str]],
                 stop: Callable[[Record], bool] = lambda record: False) -> list[Record]:
    """The records of `model_id`, its base, its base's base, ... up to the root or the first record `stop` accepts.

    `load` reads one record (raising ModelNotFoundError when it is missing). A base that is missing or a link
    back to a model already walked means damaged metadata: IntegrityError (MissingBaseError for a missing base)
    naming the broken link.
    """
    chain = [load(model_id)]
    walked = [model_id]
    while not stop(chain[-1]):
        base_id = base_of(chain[-1])
        if base_id is None:
            break
        if base_id in walked:
            loop = " -> ".join(walked[walked.index(base_id):] + [base_id])
            raise IntegrityError(f"the lineage of model {model_id} loops ({loop}): model {walked[-1]} names {base_id} "
                                 "as its base, which derives from it; the model documents were changed: restore them "
                                 "from a backup or remove the models of the loop with `mmlib rm`")
        try:
            chain.append(load(base_id))
        except ModelNotFoundError as error:
            raise MissingBaseError(f"model {walked[-1]} in the lineage of {model_id} names {base_id!r} as its base, "
                                   "which is not in this store; restore it from a backup") from error
        walked.append(base_id)
    return chain
