// Package handoff hands a running ztdns agent's listening sockets over to
// the agent that replaces it.
//
// A restart must not lose a query. Binding fresh sockets cannot promise
// that: datagrams queued in the old agent's socket die with it, and there is
// a moment when nobody is bound. So the new agent asks the old one for its
// listening sockets over a unix socket next to the control socket
// (SCM_RIGHTS), serves on duplicates of the very same sockets, and only then
// tells the old agent to stop reading. The kernel queue never goes away.
//
// The exchange, one line each way:
//
//	new → old: "takeover2 ID generation=N" (ID: the new agent's identity,
//	           N its pod template generation, see below), or, from an
//	           agent without a generation, "takeover ID"
//	old → new: JSON {agent, generation, sockets: [{network, addr}…]}, with the file
//	           descriptors attached (at most MaxFDsPerMessage; the rest
//	           follow in one-byte messages); or {refused} or {error}, with none
//	new → old: "serving"           (new reads from the sockets now)
//	old → new: "released"          (old stopped reading and stopped serving
//	                               its control socket)
//
// The sockets are the resolver's, the metrics listener ("metrics") and the
// control socket's listener ("control", its addr the socket's path). The
// control socket is handed over rather than bound again: its path never
// goes missing, so the CNI plugin never finds no agent there mid-upgrade
// (under onAgentUnreachable "allow" its pod would start uncaptured, under
// "fail" its ADD would fail). The old agent stops accepting on it, without
// removing the path, and answers a request on every connection it took
// (for 2 s at most, see control.Serve), before it fences capture;
// connections it has not taken wait in the socket's backlog until the new
// agent, having taken over and reconciled, accepts them (within the
// plugin's timeout, 5 s by default). A request the old agent could not
// answer within its 2 s it leaves unread, or answers 503 having done
// nothing of it, and the plugin sends it again, to the new agent.
//
// The new agent then holds the connection open for as long as it runs, and
// the old one, idle until its pod is deleted, watches it: when it ends, the
// new agent's process has ended. Should the new pod be deleted before the
// old one (a `helm rollback` mid-rollout) or its agent stop for good, the
// old agent would otherwise stay idle while the node had no resolver, no
// control socket and no heartbeat, until its liveness probe restarted it.
// It exits instead (ErrSuccessorGone), unless an agent serves at the
// hand-off path: the new one handed over in turn, to an agent that serves
// on (a fresh old agent would take the node from it). The kubelet restarts
// it, and it starts afresh.
//
// An agent is known by its pod's UID (agent.Config.PodUID, the chart's POD_UID),
// which a container restarted in the same pod keeps and a new pod does
// not; outside Kubernetes, by a random identity of its process. An agent
// refuses to hand over to the one it took over from. In a DaemonSet rolling
// update the old pod stays, its agent idle, until the new pod has been
// ready for minReadySeconds; should the old pod's container be restarted
// meanwhile (OOM-killed, its liveness probe), the restarted agent, with
// the old pod's UID, would otherwise take the node back, leave the new
// agent idle, and stop with no successor when its pod is deleted next:
// the node would have no resolver. Refused ({refused}), it binds, marks
// and installs nothing and exits with an error saying why
// (ErrRefusedRestart): its pod is not ready while the kubelet restarts it,
// refused again each time, until the pod is deleted. Outside Kubernetes a
// restarted process has a new identity, and is not refused.
//
// Whom an agent took over from outlives its process: as it takes over, an
// agent with a pod UID records it beside the hand-off socket
// (RecordPredecessor), and one restarted in the same pod reads it as it
// starts. Else, should the new pod's container be restarted too (OOM), the
// old agent, finding nobody at the hand-off path, would exit; the new
// pod's agent, restarted with no predecessor, would hand the node to the
// old pod's restarted one if it asked second, and sit idle, and the old
// pod's deletion would leave the node without a resolver. A later
// take-over, by this agent's successor, replaces the record; asked by any
// agent but its predecessor, an agent hands over as ever.
//
// Agents are ordered too, in Kubernetes: by the pod-template-generation
// label of their pod (agent.Config.Generation, the chart's
// POD_TEMPLATE_GENERATION), which the DaemonSet controller raises with
// every change of the pod template, a `helm rollback` included (it writes
// the old template anew). An agent refuses to hand over to an agent of a
// lower generation ({refused}, ErrRefusedOlder), whether or not it took
// over from it: in a rolling update the old pod's container may be dead
// (crash-looping, OOM-killed: just when a fix is rolled out) as the new
// pod's agent starts, which then starts afresh, takes over from nobody and
// records no predecessor. Handed the node when the old pod's container
// restarted, it would sit idle, its pod ready on the shared probe port,
// and the rollout would delete the old pod: the node would fail open,
// with no resolver until the new agent noticed and the kubelet restarted
// it, again at every crash of the old one. An agent of the same
// generation (a container restarted, a pod deleted and made anew) or a
// higher one is handed the node as ever, and so is one that tells none
// (outside Kubernetes, or from before generations: an agent of an older
// release restarted in the update that first brings generations is not
// refused, and a rollback to a release from before them takes over as it
// did); an agent without a generation refuses no generation.
//
// An agent from before generations ignores "takeover2 ID generation=N"
// and closes the connection: the new agent then asks again with
// "takeover ID", and tells no generation; the running agent's refusals by
// identity (its predecessor) still apply. Further fields of "takeover2"
// are KEY=VALUE after the identity; an agent ignores keys it does not know.
//
// An agent from before the control socket's hand-over ignores "takeover
// ID" and closes the connection: the new agent then asks again with
// "sockets ID", which is answered as above but without the control
// socket, and the connection closed after "released" (the old agent then
// removes the control socket's path, and the new one binds it again). An
// agent from before identities ignores that too: the new agent asks again
// with a bare "sockets", which is answered, as one from before identities
// asks, with the bare JSON list of sockets. Such an agent neither tells its
// identity nor refuses anyone, so the refusal needs both pods to carry
// identities: not in the rolling update that first brings them.
//
// Both ends must be root (SO_PEERCRED): a process that planted a socket at
// the hand-off path would otherwise be handed the queries meant for the
// agent, or be sent its sockets. Anything else is refused and logged. (The
// socket directory is root's alone, see control.PrepareDir, so nobody else
// can plant one there in the first place.)
//
// From the successor's "takeover" (or "sockets") on, the old agent reports
// not ready (it still serves): both share the probe port, which only the
// old agent serves until the successor has its table, and the successor's
// pod must not turn ready, and get the old pod deleted, before the
// handoff. An exchange that ends without "serving" makes it ready again:
// so does a successor with no table Timeouts.SyncWait after asking, which
// gives up and exits (the kubelet restarts it, and it asks again).
//
// The old agent then stays up, idle and not ready, until it is told to stop:
// in a DaemonSet rolling update (maxSurge) the old pod is deleted once the new
// one is ready, and an old agent that exited by itself would be restarted by
// the kubelet, and refused, restart after restart (or, from before
// identities, take the sockets back). Before "released" it closes its
// copies of the sockets and its hand-off listener: a successor that dies
// before listening at the path itself leaves a socket nobody accepts on, and
// the agent restarted in its place starts afresh.
package handoff
