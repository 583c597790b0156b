"""Dynamic loss scaling for fp16 autocast through the exchange: torch.amp.GradScaler's rule (halve the scale
after a skipped step, double it after ``growth_interval`` steps in a row that counted), with the two jobs
GradScaler does after the exchange moved to where DGC needs them: the exchange divides each gradient by the
scale before it enters the memory (a scaled value must never sit in a residual, whose scale would change
under it), and the skip decision is the exchange's, agreed by every rank (:meth:`dgc.exchange.Exchange.end_step`).
"""


class LossScale:
    """Multiply the loss by ``value`` before ``backward()``; give this object to the exchange
    (``DistributedOptimizer(..., loss_scale=...)``), which unscales and calls :meth:`update` every step."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        for what, value in (("init_scale", init_scale), ("growth_factor", growth_factor),
                            ("backoff_factor", backoff_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"LossScale: {what}={value!r} must be a number")
        for what, value, ok in (("init_scale", init_scale, init_scale > 0), ("growth_factor", growth_factor,
                                growth_factor > 1), ("backoff_factor", backoff_factor, 0 < backoff_factor < 1)):
            if not ok:
                raise ValueError(f"LossScale: {what}={value!r} is out of range (init_scale > 0, growth_factor > 1, "
                                 "0 < backoff_factor < 1)")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"LossScale: growth_interval={growth_interval!r} must be an int >= 1")
        self.value = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0

    def update(self, skipped):
        if skipped:
            self.value *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.value *= self.growth_factor
            self.good_steps = 0

    def state_dict(self):
        return {"value": self.value, "good_steps": self.good_steps}

    def load_state_dict(self, state):
        self.value, self.good_steps = float(state["value"]), int(state["good_steps"])
