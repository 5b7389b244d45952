"""A GCS emulator for the tests: gcp-storage-emulator, made to honour what tensorstore (orbax's array store) relies on.

The emulator (PyPI: gcp-storage-emulator) speaks GCS's JSON API well enough for gcsfs, but it ignores generation
preconditions (``ifGenerationMatch``, ``ifGenerationNotMatch``) and sends no ``x-goog-generation`` header with an
object's bytes; tensorstore's OCDBT checkpoints need both (a conditional manifest update; "Malformed
StorageGeneration" without the header). This wrapper adds them to its object handlers, as GCS documents them:
a failed ``ifGenerationMatch`` is 412, a matching ``ifGenerationNotMatch`` on a read is 304, ``ifGenerationMatch=0``
means "only if there is no such object". Handlers run one at a time (the check and the write are one step).

``python -m tests.support.gcs_emulator start --host=127.0.0.1 --port=N --in-memory --default-bucket=B``
"""

import functools
import threading
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_LOCK = threading.RLock()  # get() calls download()


def _generation(storage, bucket: str, name: str) -> str | None:
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return None


def _refused(request, storage, name: str | None, reading: bool) -> HTTPStatus | None:
  """The status a precondition in the query answers with, or None when the request may go ahead."""
  if name is None:
    return None
  now = _generation(storage, request.params["bucket_name"], name)
  match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
  if match is not None and (now or "0") != match[0]:
    return HTTPStatus.PRECONDITION_FAILED
  if not_match is not None and (now or "0") == not_match[0]:
    return HTTPStatus.NOT_MODIFIED if reading else HTTPStatus.PRECONDITION_FAILED
  return None


def _with_preconditions(handler, reading: bool, name_in_query: bool = False):
  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    with _LOCK:
      name = request.query.get("name", [None])[0] if name_in_query else request.params.get("object_id")
      status = _refused(request, storage, name, reading)
      if status is not None:
        response.status = status
        return None
      result = handler(request, response, storage, *args, **kwargs)
      if reading and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT) and name is not None:
        generation = _generation(storage, request.params["bucket_name"], name)
        if generation is not None:
          response["x-goog-generation"] = generation
          response["x-goog-metageneration"] = "1"
      return result

  return wrapped


objects.download = _with_preconditions(objects.download, reading=True)
objects.get = _with_preconditions(objects.get, reading=True)
objects.insert = _with_preconditions(objects.insert, reading=False, name_in_query=True)
objects.delete = _with_preconditions(objects.delete, reading=False)


if __name__ == "__main__":
  import sys

  from gcp_storage_emulator.__main__ import main  # the routes are built from the patched handlers above

  sys.exit(main())
