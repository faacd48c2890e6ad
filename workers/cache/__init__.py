"""The result cache: finished replies in Redis (:mod:`workers.cache.results`, written by the Redis
sink), answered from before the engine by :mod:`workers.cache.result_step`. Intents are not here:
see :mod:`pipeline.intents` and :mod:`workers.intents`."""
