package agent

// HeartbeatEvery is how often the agent beats: a staleness bound at or near
// it fails pods open at every late beat.
const HeartbeatEvery = heartbeatEvery
