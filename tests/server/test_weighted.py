"""`Service.weighted`: the scalar `sum(w * f(x))` a peer protocol differentiates for a weighted vector output
(UM-Bridge's ApplyHessian), checked against JAX; and what UM-Bridge's Info lists."""

import numpy as np
import pytest

from adserve.server.service import Service, ServiceError

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

# an input named w and a node-like name: the weight input must take a name neither uses
DEFINITION = {"inputs": [{"name": "x", "shape": [2]}, {"name": "w", "shape": []}],
              "expr": "stack([x[0] * w**2, sin(x[1]) * w, x[0] * x[1]])"}


def f_jax(x, w):
    return jnp.stack([x[0] * w**2, jnp.sin(x[1]) * w, x[0] * x[1]])


@pytest.fixture
def service():
    return Service()


def test_weighted_is_the_weighted_sum_and_its_hvp_the_second_order_adjoint(service):
    fid = service.register(DEFINITION)[0]["id"]
    info = service.weighted(fid)
    names = [i["name"] for i in info["inputs"]]
    assert names[:2] == ["x", "w"] and names[2] not in ("x", "w") and info["output_shape"] == []
    assert info["inputs"][2]["shape"] == [3]
    x, w, weights = np.array([0.3, -1.2]), 0.8, np.array([0.5, -2.0, 1.5])
    tangent = {"x": np.array([1.0, -0.5]), "w": 0.25}
    got = service.evaluate(info["id"], {"inputs": {"x": x, "w": w, names[2]: weights}, "compute": ["value", "hvp"],
                                        "tangent": tangent, "wrt": ["x", "w"]})

    def weighted(x, w):
        return jnp.dot(weights, f_jax(x, w))

    _, want = jax.jvp(jax.grad(weighted, argnums=(0, 1)), (x, w), (tangent["x"], tangent["w"]))
    np.testing.assert_allclose(got["value"], weighted(x, w), rtol=1e-12)
    np.testing.assert_allclose(got["hvp"]["x"], want[0], rtol=1e-12)
    np.testing.assert_allclose(got["hvp"]["w"], want[1], rtol=1e-12)
    assert service.weighted(fid)["id"] == info["id"]  # the same composition, the same function


def test_weighted_of_a_scalar_function(service):
    fid = service.register({"inputs": [{"name": "x", "shape": [3]}], "expr": "sum(x**3)"})[0]["id"]
    info = service.weighted(fid)
    assert info["inputs"][1]["shape"] == []
    r = service.evaluate(info["id"], {"inputs": {"x": np.array([1.0, 2.0, 3.0]), info["inputs"][1]["name"]: 2.0},
                                      "compute": ["hvp"], "tangent": {"x": np.ones(3)}, "wrt": ["x"]})
    np.testing.assert_allclose(r["hvp"]["x"], 2.0 * 6 * np.array([1.0, 2.0, 3.0]))


def test_weighted_of_an_unknown_function_is_not_found(service):
    with pytest.raises(ServiceError) as e:
        service.weighted("no-such-function")
    assert e.value.code == "function_not_found"


def test_umbridge_info_lists_what_is_registered_by_name_and_id(service):
    """UM-Bridge's Info (its client accepts only a listed model) is the caller's listing: names and ids."""
    from adserve.server import umbridge
    before = umbridge._info(service, None)["models"]
    fid = service.register({**DEFINITION, "name": "info.listed"})[0]["id"]
    models = umbridge._info(service, None)["models"]
    assert {"info.listed", fid} <= set(models) and not {"info.listed", fid} & set(before)
