"""S3 load for bench/gateway.sh: the same client against each gateway.

    s3_load.py ENDPOINT ACCESS_KEY SECRET_KEY BUCKET

Phases, one after the other, each timed alone:
  big put    BIG_OBJECTS objects of BIG_MIB MiB of random bytes (made once,
             before timing, and different per object: nothing to dedup or
             compress), THREADS at a time, one PUT each
  big get    the same objects read back whole and compared
  small put  SMALL_OBJECTS objects of SMALL_KIB KiB, THREADS at a time
  small get  the same, read back and compared
Prints one JSON object: MiB/s for big, objects/s for small. The client is
boto3 (botocore), the same for every server, sharing the machine's cores
with it: figures compare servers within one run, not across machines.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.client import Config

BIG_OBJECTS = int(os.environ.get("BENCH_S3_BIG_OBJECTS", "32"))
BIG_MIB = int(os.environ.get("BENCH_S3_BIG_MIB", "8"))
SMALL_OBJECTS = int(os.environ.get("BENCH_S3_SMALL_OBJECTS", "1000"))
SMALL_KIB = int(os.environ.get("BENCH_S3_SMALL_KIB", "4"))
THREADS = int(os.environ.get("BENCH_S3_THREADS", "4"))


def main():
    endpoint, access, secret, bucket = sys.argv[1:5]
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access,
        aws_secret_access_key=secret, region_name="us-east-1",
        config=Config(signature_version="s3v4", max_pool_connections=THREADS * 2,
                      retries={"max_attempts": 3, "mode": "standard"},
                      s3={"addressing_style": "path"}))
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        # JuiceFS's gateway serves one bucket, named after the volume, and
        # makes no others.
        client.head_bucket(Bucket=bucket)
    big = [os.urandom(BIG_MIB << 20) for _ in range(BIG_OBJECTS)]
    small = [os.urandom(SMALL_KIB << 10) for _ in range(SMALL_OBJECTS)]

    def timed(fn, items):
        start = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(fn, items))
        return time.monotonic() - start

    def put(prefix, data):
        def one(i):
            client.put_object(Bucket=bucket, Key=f"{prefix}/{i:05d}", Body=data[i])
        return one

    def get(prefix, data):
        def one(i):
            body = client.get_object(Bucket=bucket, Key=f"{prefix}/{i:05d}")["Body"].read()
            if body != data[i]:
                raise SystemExit(f"{prefix}/{i:05d} read back different")
        return one

    out = {}
    secs = timed(put("big", big), range(BIG_OBJECTS))
    out["big_put_mib_s"] = BIG_OBJECTS * BIG_MIB / secs
    secs = timed(get("big", big), range(BIG_OBJECTS))
    out["big_get_mib_s"] = BIG_OBJECTS * BIG_MIB / secs
    secs = timed(put("small", small), range(SMALL_OBJECTS))
    out["small_put_per_s"] = SMALL_OBJECTS / secs
    secs = timed(get("small", small), range(SMALL_OBJECTS))
    out["small_get_per_s"] = SMALL_OBJECTS / secs
    print(json.dumps(out))


if __name__ == "__main__":
    main()
