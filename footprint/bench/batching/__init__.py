"""``footprint bench batching``: attribution on a continuously batching model server
against a known truth.

``footprint.demo.costs``: what an engine step costs (energy and time as functions of
its batch), calibrated on published measurements (the demo's simulated GPUs draw it
too); ``engine``: the server, step by step, with each
request's true energy (its Shapley value); ``traffic``: the scenarios' requests;
``drive``: the served requests through the real runtime under each attribution rule;
``measure``: the figures; ``calibration``: the cost model against what it was fitted to.
"""
