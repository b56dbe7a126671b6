"""The OpenAPI document of one function served as a Tesseract, as a Tesseract's own server writes it.

`tesseract_core.Tesseract` and tesseract-jax read it: the endpoints (`paths`),
the input and output names (`Apply_InputSchema`, `Apply_OutputSchema`), the
differentiable paths (`differentiable_arrays` of `ApplyInputSchema` and
`ApplyOutputSchema`) and the encodings a request may ask for
(`x-supported-output-formats`, `-gpu-transports`, `-compressions`). The array
schemas say what `tesseract.py` reads: json and base64 buffers, exact shapes.
`input_schema` and `output_schema` are the same schemas standing alone (what
the older `/input_schema` and `/output_schema` endpoints answer).
"""

from .. import __version__

OUTPUT = "value"
FORMATS = ("json", "json+base64")
SUMMARIES = {
    "apply": "Apply the function: its value",
    "abstract_eval": "The output's shape and dtype for inputs of these shapes",
    "jacobian": "The Jacobian of the output with respect to jac_inputs",
    "jacobian_vector_product": "The JVP along tangent_vector",
    "vector_jacobian_product": "The VJP of cotangent_vector",
}


def differentiable(info) -> list:
    """The inputs a derivative may be taken for: the float64 ones."""
    return [s["name"] for s in info["inputs"] if s.get("dtype", "float64") == "float64"]


def _array_schema(shape, dtype: str, differentiable: bool, ref: str) -> dict:
    data = ["Base64ArrayData", "JsonArrayData"]
    shape_schema = {"type": "array", "items": {"type": "integer"}} if shape is None else \
        {"type": "array", "prefixItems": [{"type": "integer", "enum": [n]} for n in shape],
         "minItems": len(shape), "maxItems": len(shape), "examples": [list(shape)]}
    return {"type": "object", "additionalProperties": False, "required": ["shape", "dtype", "data"],
            "title": f"EncodedArrayModel__{'_'.join(map(str, shape)) if shape else 'scalar'}__{dtype}"
                     + ("__DIFFERENTIABLE" if differentiable else ""),
            "array_flags": ["DIFFERENTIABLE"] if differentiable else [],
            "properties": {"object_type": {"type": "string", "const": "array", "default": "array"},
                           "shape": shape_schema, "dtype": {"type": "string", "enum": [dtype]},
                           "data": {"oneOf": [{"$ref": ref + d} for d in data],
                                    "discriminator": {"propertyName": "encoding", "mapping": {
                                        "base64": ref + data[0], "json": ref + data[1]}}}}}


def _object(title: str, properties: dict) -> dict:
    return {"title": title, "type": "object", "additionalProperties": False, "properties": properties,
            "required": list(properties)}


def _input_schema(info, ref: str, title="Apply_InputSchema") -> dict:
    return _object(title, {s["name"]: _array_schema(s["shape"], s.get("dtype", "float64"),
                                                     s["name"] in differentiable(info), ref) for s in info["inputs"]})


def _output_schema(info, ref: str) -> dict:
    return _object("Apply_OutputSchema", {OUTPUT: _array_schema(info["output_shape"], "float64", True, ref)})


def _array_data(ref_json_value: str) -> dict:
    return {
        "Base64ArrayData": _object("Base64ArrayData", {"buffer": {"type": "string"},
                                                       "encoding": {"type": "string", "const": "base64"}}),
        "JsonArrayData": _object("JsonArrayData", {"buffer": {"$ref": ref_json_value},
                                                   "encoding": {"type": "string", "const": "json"}}),
        "JsonValue": {},
    }


def _standalone(schema: dict) -> dict:
    """A schema with its array encodings under `$defs` (what /input_schema and /output_schema answer)."""
    return {**schema, "$defs": _array_data("#/$defs/JsonValue")}


def openapi(info, name: str) -> dict:
    ref = "#/components/schemas/"
    inputs, outputs = _input_schema(info, ref), _output_schema(info, ref)
    shapes = {s["name"]: {"dtype": s.get("dtype", "float64"), "shape": list(s["shape"])} for s in info["inputs"]}
    diff = differentiable(info)
    shape_dtype = {"$ref": ref + "ShapeDType"}
    any_array = _array_schema(None, "float64", False, ref)
    names = {"type": "array", "minItems": 1, "uniqueItems": True,
             "items": {"anyOf": [{"type": "string", "const": n} for n in diff]}}
    output_names = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string", "const": OUTPUT}}
    schemas = {
        **_array_data(ref + "JsonValue"),
        "Apply_InputSchema": inputs, "Apply_OutputSchema": outputs,
        "ApplyInputSchema": {**_object("ApplyInputSchema", {"inputs": {"$ref": ref + "Apply_InputSchema"}}),
                             "differentiable_arrays": {n: shapes[n] for n in diff},
                             "field_order": {"": [s["name"] for s in info["inputs"]]}},
        "ApplyOutputSchema": {"$ref": ref + "Apply_OutputSchema", "title": "ApplyOutputSchema",
                              "differentiable_arrays": {OUTPUT: {"dtype": "float64",
                                                                 "shape": list(info["output_shape"])}},
                              "field_order": {"": [OUTPUT]}},
        "ShapeDType": _object("ShapeDType", {"shape": {"type": "array", "items": {"type": "integer"}},
                                             "dtype": {"type": "string"}}),
        "AbstractEval_InputSchema": _object("AbstractEval_InputSchema", {n: shape_dtype for n in shapes}),
        "AbstractEval_OutputSchema": _object("AbstractEval_OutputSchema", {OUTPUT: shape_dtype}),
        "AbstractInputSchema": _object("AbstractInputSchema", {"inputs": {"$ref": ref + "AbstractEval_InputSchema"}}),
        "AbstractOutputSchema": {"$ref": ref + "AbstractEval_OutputSchema", "title": "AbstractOutputSchema"},
        "JacobianInputSchema": _object("JacobianInputSchema", {"inputs": {"$ref": ref + "Apply_InputSchema"},
                                                               "jac_inputs": names, "jac_outputs": output_names}),
        "JacobianOutputSchema": {"title": "JacobianOutputSchema", "type": "object", "propertyNames": {"const": OUTPUT},
                                 "additionalProperties": {"type": "object", "additionalProperties": any_array}},
        "JVPInputSchema": _object("JVPInputSchema", {"inputs": {"$ref": ref + "Apply_InputSchema"},
                                                     "jvp_inputs": names, "jvp_outputs": output_names,
                                                     "tangent_vector": {"type": "object",
                                                                        "additionalProperties": any_array}}),
        "JVPOutputSchema": {"title": "JVPOutputSchema", "type": "object", "propertyNames": {"const": OUTPUT},
                            "additionalProperties": any_array},
        "VJPInputSchema": _object("VJPInputSchema", {"inputs": {"$ref": ref + "Apply_InputSchema"},
                                                     "vjp_inputs": names, "vjp_outputs": output_names,
                                                     "cotangent_vector": {"type": "object",
                                                                          "additionalProperties": any_array}}),
        "VJPOutputSchema": {"title": "VJPOutputSchema", "type": "object", "additionalProperties": any_array},
    }
    bodies = {"apply": ("ApplyInputSchema", "ApplyOutputSchema"),
              "abstract_eval": ("AbstractInputSchema", "AbstractOutputSchema"),
              "jacobian": ("JacobianInputSchema", "JacobianOutputSchema"),
              "jacobian_vector_product": ("JVPInputSchema", "JVPOutputSchema"),
              "vector_jacobian_product": ("VJPInputSchema", "VJPOutputSchema")}

    def json_body(schema: str) -> dict:
        return {"content": {"application/json": {"schema": {"$ref": ref + schema}}}}

    paths = {f"/{e}": {"post": {"summary": SUMMARIES[e], "operationId": f"{e}_{e}_post",
                                "requestBody": {"required": True, **json_body(i)},
                                "responses": {"200": {"description": "Successful Response", **json_body(o)}}}}
             for e, (i, o) in bodies.items()}
    paths["/health"] = {"get": {"summary": "Health", "operationId": "health_health_get",
                                "responses": {"200": {"description": "Successful Response"}}}}
    for which in ("input_schema", "output_schema"):
        paths[f"/{which}"] = {"get": {"summary": f"The JSON Schema of the {which.split('_')[0]}s",
                                      "operationId": f"{which}_{which}_get",
                                      "responses": {"200": {"description": "Successful Response"}}}}
    return {"openapi": "3.1.0", "info": {"title": name, "version": __version__,
                                         "description": f"adserve function {info['id']} as a Tesseract"},
            "paths": paths, "components": {"schemas": schemas},
            "x-supported-output-formats": list(FORMATS), "x-supported-gpu-transports": ["none"],
            "x-supported-compressions": ["none"]}



def input_schema(info) -> dict:
    return _standalone(_input_schema(info, "#/$defs/"))


def output_schema(info) -> dict:
    return _standalone(_output_schema(info, "#/$defs/"))
