//! Commands: the CLI's control socket and the signals the master honours.

use super::*;

impl Master {
    pub(super) async fn serve_cli(self, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    spawn_local(async move { me.handle_cli(stream).await });
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    pub(super) async fn handle_cli(&self, stream: UnixStream) {
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        let mut line = Vec::new();
        let request = match read_msg::<_, Request>(&mut reader, &mut line).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_msg(
                    &mut write_half,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                )
                .await;
                return;
            }
        };
        let ok = |message: String| Response::Ok {
            master_pid: std::process::id(),
            message,
        };
        let response = match request {
            Request::Ping => {
                let mut rx = self.started.subscribe();
                let _ = rx.wait_for(|s| *s).await;
                ok("running".into())
            }
            Request::Stop {
                graceful,
                restart,
                timeout_secs,
            } => {
                self.stop(graceful, restart, timeout_secs.map(Duration::from_secs));
                let _ = write_msg(&mut write_half, &ok("stopping".into())).await;
                // The caller waits for this socket to close: that happens when the master exits.
                std::future::pending::<()>().await;
                return;
            }
            Request::Reload {
                graceful,
                timeout_secs,
            } => match self
                .reload(graceful, timeout_secs.map(Duration::from_secs))
                .await
            {
                Ok(m) => ok(m),
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Request::Status => Response::Status(Box::new(self.status().await)),
            Request::Connections => Response::Connections {
                rows: self.connections().await,
            },
            Request::Cluster => match &self.bus {
                Some(bus) if !bus.is_connected() => Response::Error {
                    message: format!(
                        "this node cannot see the bus: NATS unreachable{} (cut off, or the \
                         servers are down); no census possible",
                        bus.disconnected_for()
                            .map(|d| format!(" for {:.0} s", d.as_secs_f64()))
                            .unwrap_or_default()
                    ),
                },
                Some(bus) => Response::Cluster {
                    nodes: crate::process::cluster::census(bus).await,
                },
                None => Response::Cluster {
                    nodes: vec![self.node_info().await],
                },
            },
        };
        let _ = write_msg(&mut write_half, &response).await;
    }
    pub(super) async fn handle_signals(self) {
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
            SignalKind::hangup(),
        ];
        let mut streams = Vec::new();
        for k in kinds {
            match signal(k) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    tracing::error!("cannot handle signals: {e}");
                    return;
                }
            }
        }
        let [int, term, quit, usr1, usr2, hup] = &mut streams[..] else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => self.stop(false, false, None),
                _ = term.recv() => self.stop(false, false, None),
                _ = quit.recv() => self.stop(true, false, None),
                _ = usr1.recv() => self.reload_in_background(false),
                _ = usr2.recv() => self.reload_in_background(true),
                // nginx's convention, and what systemd's `ExecReload=kill -HUP $MAINPID` expects.
                _ = hup.recv() => self.reload_in_background(false),
            }
        }
    }
}
