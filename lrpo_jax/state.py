"""The whole truth of a run in one pytree: orbax saves it, resume restores it bit for bit."""
from __future__ import annotations

import flax.struct
import jax

from lrpo_jax.router import RouterState


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # i32: completed training steps
    rng: jax.Array         # u32 [2]: raw threefry key data (portable across checkpoints)
    params: object         # nnx.State of the policy
    opt_state: object      # optax state over `params`
    router: RouterState

    def next_keys(self, n: int):
        """(new state, n fresh keys): the only source of randomness in a step."""
        keys = jax.random.split(jax.random.wrap_key_data(self.rng), n + 1)
        return self.replace(rng=jax.random.key_data(keys[0])), list(keys[1:])
