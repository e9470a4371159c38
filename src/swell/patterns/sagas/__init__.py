"""Sagas: ordered steps, each an action and a compensation, with a durable log in the backend's kv
store, run by the normal runtime (``swell run``) and overridden by operators (``swell saga``).

>>> checkout = app.saga("checkout", step_timeout="10s")
>>> @checkout.step()
... async def reserve(order: Order, ctx: SagaContext) -> dict: ...
>>> @checkout.compensation("reserve")
... async def release(order: Order, result: dict | None, ctx: SagaContext) -> None: ...
>>> saga_id = await checkout.start({"id": "o-1", "amount": 10})
"""

from swell.patterns.sagas.log import Entry, SagaError, SagaLog, SagaState, StepLog, StepState
from swell.patterns.sagas.saga import Saga, SagaContext

__all__ = ["Entry", "Saga", "SagaContext", "SagaError", "SagaLog", "SagaState", "StepLog",
           "StepState"]
