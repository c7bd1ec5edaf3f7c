"""The ``/api/jobs`` view of the queue and history, as ComfyUI 0.8.0 computes it.

Jobs merge running, pending and finished prompts into one shape (null fields left out), which
is what lets a client tell "pending" from "unknown" where ``/history/{id}`` cannot.
"""

from __future__ import annotations

from typing import Any

STATUSES = ("pending", "in_progress", "completed", "failed")
_PREVIEWABLE = {"images", "video", "audio"}
_THREE_D = (".obj", ".fbx", ".gltf", ".glb")


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _meta(extra_data: dict) -> tuple[Any, Any]:
    return (extra_data.get("create_time"), extra_data.get("extra_pnginfo", {}).get("workflow", {}).get("id"))


def _previewable(media_type: str, item: dict) -> bool:
    fmt = item.get("format", "")
    return (
        media_type in _PREVIEWABLE
        or bool(fmt and fmt.startswith(("video/", "audio/")))
        or item.get("filename", "").lower().endswith(_THREE_D)
    )


def _outputs_summary(outputs: dict) -> tuple[int, dict | None]:
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and _previewable(media_type, item):
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


def queued_job(item: tuple, status: str) -> dict:
    priority, prompt_id, _, extra_data, _ = item[:5]
    create_time, workflow_id = _meta(extra_data)
    return _pruned(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )


def finished_job(prompt_id: str, entry: dict, full: bool = False) -> dict:
    priority, _, prompt, extra_data, _ = entry["prompt"]
    create_time, workflow_id = _meta(extra_data)
    status_info = entry.get("status") or {}
    status = "failed" if status_info.get("status_str") == "error" else "completed"
    outputs = entry.get("outputs", {})
    count, preview = _outputs_summary(outputs)
    error = start = end = None
    for event, data in status_info.get("messages", []):
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if event == "execution_error":
                error = data
    job = _pruned(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "preview_output": preview,
            "workflow_id": workflow_id,
        }
    )
    if full:
        job.update(outputs=outputs, execution_status=status_info, workflow={"prompt": prompt, "extra_data": extra_data})
    return job


def get_job(prompt_id: str, running: list, pending: list, history: dict) -> dict | None:
    if prompt_id in history:
        return finished_job(prompt_id, history[prompt_id], full=True)
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item[1] == prompt_id:
                return queued_job(item, status)
    return None


def parse_list_query(query: Any) -> dict | str:
    """Validate ``GET /api/jobs`` parameters: keyword arguments for list_jobs, or an error text."""
    statuses = None
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            return f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(STATUSES)}"
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return "sort_by must be 'created_at' or 'execution_duration'"
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        return "sort_order must be 'asc' or 'desc'"
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            return "limit must be an integer"
        if limit <= 0:
            return "limit must be a positive integer"
    offset = 0
    if "offset" in query:
        try:
            offset = max(0, int(query["offset"]))
        except ValueError:
            return "offset must be an integer"
    return {
        "statuses": statuses,
        "workflow_id": query.get("workflow_id"),
        "sort_by": sort_by,
        "sort_order": sort_order,
        "limit": limit,
        "offset": offset,
    }


def list_jobs(
    running: list,
    pending: list,
    history: dict,
    *,
    statuses: list | None,
    workflow_id: str | None,
    sort_by: str,
    sort_order: str,
    limit: int | None,
    offset: int,
) -> dict:
    wanted = statuses or STATUSES
    jobs = []
    if "in_progress" in wanted:
        jobs += [queued_job(item, "in_progress") for item in running]
    if "pending" in wanted:
        jobs += [queued_job(item, "pending") for item in pending]
    if "completed" in wanted or "failed" in wanted:
        for prompt_id, entry in history.items():
            failed = entry.get("status", {}).get("status_str") == "error"
            if ("failed" if failed else "completed") in wanted:
                jobs.append(finished_job(prompt_id, entry))
    if workflow_id:
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
    if sort_by == "execution_duration":

        def key(job: dict) -> Any:
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return end - start if end and start else 0
    else:

        def key(job: dict) -> Any:
            return job.get("create_time", 0)

    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    page = jobs[offset:]
    if limit is not None:
        page = page[:limit]
    return {
        "jobs": page,
        "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total},
    }
