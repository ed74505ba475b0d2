"""A standard v2 gRPC client against a workbench server: KServe's ``InferenceGRPCClient``.

Run by tests/test_serve_grpc.py with the kserve environment's interpreter (``.venv-kserve``:
kserve 0.21, its own protobuf 6 and generated messages), never imported by the workbench. Reads
``{"target", "model", "x": {"shape", "datatype", "data"}, "token"}`` on stdin; writes on stdout
what the server answered: health, metadata, the outputs of the same batch sent as raw bytes and
as typed contents, and the status code of malformed requests.
"""

import asyncio
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb


async def infer(client, model, x, binary, metadata):
    inp = InferInput(name="input", shape=list(x.shape), datatype=_datatype(x))
    inp.set_data_from_numpy(x, binary_data=binary)
    res = await client.infer(InferRequest(model_name=model, infer_inputs=[inp], request_id="r1"), headers=metadata)
    out = res.outputs[0]
    return {"id": res.id, "name": out.name, "datatype": out.datatype, "shape": list(out.shape),
            "data": out.as_numpy().reshape(-1).tolist()}


def _datatype(x):
    return {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}[x.dtype.type]


async def code_of(call):
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return [err.code().name, err.details()]
    return ["OK", ""]


def tensor(x, datatype=None, shape=None):
    t = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype or _datatype(x),
                                              shape=list(x.shape) if shape is None else shape)
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return t


async def main():
    args = json.load(sys.stdin)
    x = np.asarray(args["x"]["data"], dtype=np.float32).reshape(args["x"]["shape"])
    model = args["model"]
    metadata = (("authorization", f"Bearer {args['token']}"),) if args.get("token") else None
    out = {}
    async with InferenceGRPCClient(args["target"], retries=0, timeout=30) as client:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready(model)
        stub = client._client_stub  # KServe's own generated stub: the two calls its client does not wrap
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), metadata=metadata)
        out["metadata"] = {"name": meta.name, "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]}
        server = await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata)
        out["server"] = {"name": server.name, "version": server.version}
        out["raw"] = await infer(client, model, x, True, metadata)
        out["typed"] = await infer(client, model, x, False, metadata)
        bad = {
            "wrong_shape": pb.ModelInferRequest(model_name=model, inputs=[tensor(x, shape=[x.size])]),
            "too_few_values": pb.ModelInferRequest(model_name=model, inputs=[tensor(x[:, :-1].copy(), shape=list(x.shape))]),
            "wrong_datatype": pb.ModelInferRequest(model_name=model, inputs=[tensor(x, datatype="FP64")]),
            "not_a_datatype": pb.ModelInferRequest(model_name=model, inputs=[tensor(x, datatype="FLOAT")]),
            "nan": pb.ModelInferRequest(model_name=model, inputs=[tensor(np.full_like(x, np.nan))]),
            "raw_short": pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=list(x.shape))], raw_input_contents=[x.tobytes()[:-4]]),
            "no_inputs": pb.ModelInferRequest(model_name=model),
            "unknown_model": pb.ModelInferRequest(model_name="nope", inputs=[tensor(x)]),
        }
        out["bad"] = {k: await code_of(stub.ModelInfer(v, metadata=metadata)) for k, v in bad.items()}
        if args.get("token"):
            out["no_token"] = await code_of(stub.ModelInfer(bad["wrong_shape"]))
    json.dump(out, sys.stdout)


asyncio.run(main())
