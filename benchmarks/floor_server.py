"""The hand-written floor: one onnxruntime session behind Starlette + uvicorn (uvloop, httptools),
V2 JSON, no batching, no validation, no metrics - the endpoint a user would write in 30 lines,
and the speed the builtin engine is held against (benchmarks/serving.py, REST side by side).

    python benchmarks/floor_server.py MODEL.onnx PORT [THREADS]
"""

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

model, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name


async def infer(request):
    tensor = json.loads(await request.body())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    y = session.run(None, {input_name: x})[0]
    return JSONResponse({"model_name": "model", "outputs": [
        {"name": "output", "shape": list(y.shape), "datatype": "FP32", "data": y.reshape(-1).tolist()}]})


async def ready(request):
    return Response("")


app = Starlette(routes=[Route("/v2/models/model/infer", infer, methods=["POST"]),
                        Route("/v2/health/ready", ready)])
uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
            access_log=False)
